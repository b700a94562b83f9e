"""`mlserve status`: the status page's overview in the terminal, read from the same GET /status."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

BLOCKS = "▁▂▃▄▅▆▇█"
COLUMNS = ("version", "state", "share", "load", "req/s", "", "p50", "p99", "errors", "batch", "queue", "drift")


def fetch_overview(url: str, key: str | None, timeout_s: float = 10.0) -> dict:
    """GET {url}/status; raises RuntimeError with the server's own message on refusal."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url.rstrip("/") + "/status", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            reason = json.loads(err.read()).get("error", err.reason)
        except ValueError:
            reason = err.reason
        raise RuntimeError(f"{url} answered {err.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(f"cannot reach {url}: {getattr(err, 'reason', err)}") from None


def spark(values: list | None) -> str:
    """Unicode sparkline of the recent points; gaps (nothing happened) are spaces."""
    if not values:
        return ""
    finite = [v for v in values if v is not None]
    top = max(finite, default=0) or 1
    return "".join(" " if v is None else BLOCKS[min(len(BLOCKS) - 1, int(v / top * (len(BLOCKS) - 1)))]
                   for v in values[-16:])


def _num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:.3g}{unit}" if abs(v) < 1000 else f"{v:.0f}{unit}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.3g} ms"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _version_row(v: dict) -> tuple[str, ...]:
    now = v.get("now") or {}
    series = v.get("series") or {}
    drift = v.get("drift") or {}
    return (
        f"v{v['version']}", v["state"], _pct(v["weight"]) if v.get("weight") is not None else "-",
        _num(v.get("load_s"), " s"), _num(now.get("rps")), spark(series.get("rps")), _ms(now.get("p50_s")),
        _ms(now.get("p99_s")), _pct(now.get("error_rate")), _num(now.get("batch_size")), str(v["queue_depth"]),
        drift.get("status", "-"),
    )


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _traffic_lines(model: dict) -> list[str]:
    t = model.get("traffic") or {}
    lines = []
    split = t.get("split") or {}
    if split:
        total = sum(split.values()) or 1
        shares = " / ".join(f"v{v} {w / total * 100:.0f}%" for v, w in split.items())
        lines.append(f"split: {shares} (set by {t['source']}), stable v{t.get('stable')}")
    r = t.get("rollout")
    if r:
        lines.append(f"rollout of v{r['version']} over v{r['stable']}: {r['status']}, step {r['step'] + 1}/"
                     f"{len(r['steps'])} at {r['percent']}% {r.get('reason') or ''}".rstrip())
    breakers = t.get("breakers") or {}
    if breakers:
        lines.append("breakers: " + ", ".join(f"v{v} {b['state']}" for v, b in breakers.items()))
    s = t.get("shadow")
    if s:
        lines.append(f"shadow v{s['version']} ({s['percent']}%): agreement {_pct(s['agreement'])}, "
                     f"{s['compared']} compared, {s['dropped']} dropped, {s['failed']} failed")
    if t.get("error"):
        lines.append(f"traffic error: {t['error']}")
    return lines


def _experiment_lines(exp: dict | None) -> list[str]:
    if not exp:
        return []
    lines = [f"experiment ({exp['outcome']}, control v{exp['control']}):"]
    for version, r in exp["versions"].items():
        ci = r.get("ci") or [None, None]
        line = f"  v{version}: {r['requests']} requests, {r['outcomes']} outcomes, mean {_num(r['mean'])} " \
               f"[{_num(ci[0])}, {_num(ci[1])}]"
        if "lift" in r:
            line += f", lift {_pct(r['lift'])}, p {_num(r['p_value'])}, decision {r['decision']}"
        lines.append(line)
    return lines


def _version_details(v: dict) -> list[str]:
    lines = []
    drift = v.get("drift")
    if drift and drift.get("worst") and drift["status"] != "collecting":
        worst = ", ".join(f"{f['name']} PSI {f['psi']:.3g}" for f in drift["worst"][:5])
        lines.append(f"drift v{v['version']}: {drift['status']} over {drift['window_rows']} rows; worst {worst}")
    now = v.get("now") or {}
    if now.get("kv_total"):
        lines.append(f"v{v['version']} KV cache {now['kv_used']:.0f}/{now['kv_total']:.0f} blocks, running "
                     f"{now['llm_running']:.0f}, waiting {now['llm_waiting']:.0f}, TTFT p50 {_ms(now['ttft_p50_s'])}, "
                     f"ITL p50 {_ms(now['itl_p50_s'])}")
    return lines


def render(overview: dict[str, Any], url: str) -> str:
    s = overview["server"]
    out = [f"mlserve {s['version']} at {url}: {'ready' if s['ready'] else 'NOT READY'}, up {s['uptime_s']:.0f} s "
           f"(a point every {s['interval_s']:g} s)"]
    for model in overview["models"]:
        badges = [f"serving v{model['serving']}" if model.get("serving") else "serving nothing"]
        if model.get("pinned"):
            badges.append(f"pinned v{model['pinned']}")
        out += ["", f"{model['name']}  " + ", ".join(badges) + ("  [LLM]" if model.get("kind") == "llm" else "")]
        if model.get("reason"):
            out.append(f"  {model['reason']}")
        if model["versions"]:
            out += _table([COLUMNS] + [_version_row(v) for v in model["versions"]])
        extra = _traffic_lines(model) + _experiment_lines(model.get("experiment"))
        for v in model["versions"]:
            extra += _version_details(v)
        out += ["  " + line for line in extra]
    return "\n".join(out)


def run_status(url: str, key: str | None, as_json: bool) -> int:
    try:
        overview = fetch_overview(url, key)
    except RuntimeError as exc:
        print(f"mlserve status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(overview, indent=2) if as_json else render(overview, url))
    return 0
