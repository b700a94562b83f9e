"""The serving benchmark's table (markdown), its targets as ratios, and the latency-throughput plot."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}"


NO_LANE = "mlserve JSON, aiohttp only (fast_lane = false)"


def _point(results: dict, server: str, load: str) -> dict | None:
    return next((p for p in results["points"] if p["server"] == server and p["load"] == load), None)


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _rows(results: dict) -> list[str]:
    lines = ["| server | load | body | req/s | per CPU-s | p50 ms | p95 ms | p99 ms | mean batch | server CPU % | errors |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for batch, rate in results["engine_samples_per_s"].items():
        lines.append(f"| raw engine (no HTTP) | batch {batch} | — | {rate['wall']:,.0f} samples/s | "
                     f"{rate['per_cpu_s']:,.0f} | | | | {batch} | {100 * rate['wall'] / rate['per_cpu_s']:.0f} | |")
    servers = list(dict.fromkeys(p["server"] for p in results["points"]))
    ordered = sorted(enumerate(results["points"]),
                     key=lambda ip: (ip[1]["load"].startswith("open"), servers.index(ip[1]["server"]), ip[0]))
    for _, p in ordered:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(p["statuses"].items()) if k != "200")
        errors = f"{p['errors']}" + (f" ({statuses})" if statuses else "")
        lines.append(
            f"| {p['server']} | {p['load']} | {p['body']} | {p['req_per_s']:,.0f} | {p['per_cpu_s']:,.0f} | "
            f"{_fmt(p['p50_ms'], 2)} | "
            f"{_fmt(p['p95_ms'], 2)} | {_fmt(p['p99_ms'], 2)} | {_fmt(p['mean_batch'])} | "
            f"{p['cpu_percent']:.0f} | {errors} |"
        )
    return lines


def _ratios(results: dict, key: str, engine_key: str) -> tuple[float, float, float, float]:
    """(stack limit, JSON c=64 / stack, JSON c=64 / naive c=64, binary / JSON at c=64) on one figure."""
    # The fastest bare front in the run (httptools when present): the HTTP limit of a Python front.
    http = max(p[key] for p in results["points"] if p["server"].startswith("bare ") and p["load"] == "c=64")
    naive = _point(results, "naive (1 forward/request)", "c=64")[key]
    json64 = _point(results, "mlserve JSON", "c=64")[key]
    bin64 = _point(results, "mlserve binary", "c=64")[key]
    engine = results["engine_samples_per_s"]
    engine64 = (engine.get("64") or engine.get(64))[engine_key]
    stack = 1 / (1 / http + 1 / engine64)
    return stack, json64 / stack, json64 / naive, bin64 / json64


def targets(results: dict) -> list[tuple[str, str, str, str]]:
    """(figure, measured per wall second, measured per CPU-second, target) for each target of the
    issue, as ratios to this run's own reference rows."""
    wall = _ratios(results, "req_per_s", "wall")
    cpu = _ratios(results, "per_cpu_s", "per_cpu_s")
    json64 = _point(results, "mlserve JSON", "c=64")
    json1 = _point(results, "mlserve JSON", "c=1")
    naive1 = _point(results, "naive (1 forward/request)", "c=1")
    json256 = _point(results, "mlserve JSON", "c=256")
    other_errors = json256["errors"] - json256["statuses"].get("429", 0)

    def mark(value: float, ok: bool, fmt: str) -> str:
        return f"{value:{fmt}} {'(met)' if ok else '(NOT met)'}"

    return [
        ("stack limit 1/(1/http + 1/engine64), req/s", f"{wall[0]:,.0f}", f"{cpu[0]:,.0f}", "reference"),
        ("mlserve JSON c=64 / stack limit", mark(wall[1], wall[1] >= 0.7, ".2f"), mark(cpu[1], cpu[1] >= 0.7, ".2f"),
         ">= 0.7"),
        ("mlserve JSON c=64 / naive c=64", mark(wall[2], wall[2] >= 1.8, ".2f"), mark(cpu[2], cpu[2] >= 1.8, ".2f"),
         ">= 1.8"),
        ("mlserve binary / JSON at c=64", mark(wall[3], wall[3] >= 1.5, ".2f"), mark(cpu[3], cpu[3] >= 1.5, ".2f"),
         ">= 1.5"),
        ("p99 mlserve JSON c=64, ms", mark(json64["p99_ms"], json64["p99_ms"] <= 10, ".2f"), "—", "<= 10"),
        *_tail_targets(results, mark),
        ("p50 mlserve JSON c=1, ms", mark(json1["p50_ms"], json1["p50_ms"] < 1.5, ".2f"), "—", "< 1.5"),
        ("p50 at c=1: mlserve JSON minus naive, ms", mark(json1["p50_ms"] - naive1["p50_ms"],
                                                           json1["p50_ms"] - naive1["p50_ms"] <= 0.1, "+.2f"), "—",
         "<= +0.1"),
        ("mlserve JSON c=256: errors other than 429", mark(other_errors, other_errors == 0, "d"),
         f"429s: {json256['statuses'].get('429', 0)}", "0"),
    ] + _lane_targets(results, mark) + _grpc_targets(results, mark)


def _lane_targets(results: dict, mark) -> list[tuple[str, str, str, str]]:
    """The fast lane against the same build with aiohttp only, at c=64, when the run has that row."""
    lane, aiohttp_only = _point(results, "mlserve JSON", "c=64"), _point(results, NO_LANE, "c=64")
    if aiohttp_only is None:
        return []
    wall, cpu = (lane[k] / aiohttp_only[k] for k in ("req_per_s", "per_cpu_s"))
    return [("mlserve JSON c=64, fast lane / aiohttp only", mark(wall, wall >= 1.5, ".2f"),
             mark(cpu, cpu >= 1.5, ".2f"), ">= 1.5")]


def _tail_targets(results: dict, mark) -> list[tuple[str, str, str, str]]:
    """p99 / p50 of mlserve JSON at c=16 and c=64, with the GC policy on (and off, for reference)."""
    rows = []
    for server in ("mlserve JSON", "mlserve JSON, Python's GC"):
        for load in ("c=16", "c=64"):
            point = _point(results, server, load)
            if point is None or not point["p50_ms"]:
                continue
            ratio = point["p99_ms"] / point["p50_ms"]
            figure = f"p99 / p50 {server} {load}"
            rows.append((figure, mark(ratio, ratio <= 2.5, ".1f") if server == "mlserve JSON" else f"{ratio:.1f}",
                         "—", "<= 2.5" if server == "mlserve JSON" else "reference"))
    return rows


def _grpc_targets(results: dict, mark) -> list[tuple[str, str, str, str]]:
    """gRPC with raw tensors against HTTP JSON at c=64, when the run has gRPC rows."""
    if not any(p["server"].startswith("mlserve gRPC") for p in results["points"]):
        return []
    grpc64 = _point(results, "mlserve gRPC (raw tensors)", "c=64")
    json64 = _point(results, "mlserve JSON", "c=64")
    wall = grpc64["req_per_s"] / json64["req_per_s"]
    cpu = grpc64["per_cpu_s"] / json64["per_cpu_s"] if json64["per_cpu_s"] else 0.0
    rows = [("mlserve gRPC raw / HTTP JSON at c=64", mark(wall, wall >= 1.3, ".2f"), mark(cpu, cpu >= 1.3, ".2f"),
             ">= 1.3")]
    streams = (("mlserve gRPC stream (raw tensors)", "mlserve gRPC, one stream / HTTP JSON at c=64"),
               ("mlserve gRPC streams (raw tensors)", "mlserve gRPC, a stream per caller / HTTP JSON at c=64"))
    for server, figure in streams:
        stream64 = _point(results, server, "c=64")
        if stream64 is not None:
            wall = stream64["req_per_s"] / json64["req_per_s"]
            cpu = stream64["per_cpu_s"] / json64["per_cpu_s"] if json64["per_cpu_s"] else 0.0
            rows.append((figure, mark(wall, wall >= 1.0, ".2f"), mark(cpu, cpu >= 1.0, ".2f"), ">= 1.0"))
    return rows


def table(results: dict) -> str:
    lines = [f"Measured {results['date']} on {results['machine']}, Python {results['python']}, "
             f"{results['seconds_per_point']:g} s per point, closed-loop points the median of "
             f"{results.get('repeats', 1)} interleaved rounds; server on one core, load generator on another. "
             "'per CPU-s' is req/s divided by the server process's share of its core.", ""]
    lines += _rows(results)
    lines += ["", "| target | per wall second | per CPU-second of the server | wanted |", "|---|---:|---:|---:|"]
    for figure, wall, cpu, wanted in targets(results):
        lines.append(f"| {figure} | {wall} | {cpu} | {wanted} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """p50 and p99 latency against throughput, one line per server and load kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple[str, str, bool], list[dict]] = {}
    for p in results["points"]:
        series.setdefault((p["server"], p["body"], p["load"].startswith("open")), []).append(p)
    for (server, body, is_open), points in series.items():
        # In load order (c = 1, 16, 64, 256 or rising rates): a server past its limit bends back.
        label = f"{server}{'' if body == 'json' or 'binary' in server else ' ' + body}{' (open loop)' if is_open else ''}"
        xs = [p["req_per_s"] for p in points]
        line, = ax.plot(xs, [p["p99_ms"] for p in points], marker="o", linestyle="--" if is_open else "-",
                        label=f"{label} p99")
        ax.plot(xs, [p["p50_ms"] for p in points], marker=".", linestyle=":", color=line.get_color(), alpha=0.6)
        for p in points:
            ax.annotate(p["load"].replace("open ", ""), (p["req_per_s"], p["p99_ms"]), fontsize=6,
                        color=line.get_color(), xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (req/s)")
    ax.set_ylabel("latency (ms); solid/dashed p99, dotted p50")
    ax.set_title(f"MLP 768-1024-1024-10, one row per request\n{results['date']}, shared machine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
