"""Where a request's microseconds go: mlserve under wrk at c=64 while py-spy samples it.

    python -m benchmarks.profile [--seconds 10] [--bodies json binary] [--no-lane] [--out benchmarks/results/profile_c64.txt]

Serves the seed MLP as benchmarks.serving does (API key required, drift, traffic manager and
guard on; the fast lane unless --no-lane), runs wrk with JSON and then binary bodies at c=64 on the other core, and records with `py-spy --gil`
(only the thread holding the GIL is sampled: Python's own work, not the engine's compute, which
runs without the GIL). Each part's share of those samples times the server's CPU microseconds per
request gives microseconds per request per part. Needs py-spy (pip) and wrk (Debian).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.runner import bench_key, bodies, start_server, wrk_point
from benchmarks.serving import _cores, _write_repository

# Parts of the request path, by the frame that owns them (inclusive), most specific first.
PARTS = (
    ("decode (orjson + numpy)", "decode_infer_request (mlserve/server/http/v2_codec.py"),
    ("encode", "encode_infer_response (mlserve/server/http/v2_codec.py"),
    ("gate: API key, limits, in-flight", "Gate.enter (mlserve/server/middleware.py"),
    ("schedule: submit to the batcher", "DynamicBatcher.submit (mlserve/batching/dynamic.py"),
    ("schedule: form batches, split back", "DynamicBatcher._work (mlserve/batching/dynamic.py"),
    ("engine call on the worker thread (Python side)", "_Worker._loop (mlserve/batching/guard.py"),
    ("traffic bookkeeping", "TrafficManager.record (mlserve/routing/manager.py"),
    ("monitor hand-off", "Monitor.observe (mlserve/monitor/hub.py"),
    ("service: route, validate, respond", "InferenceService.infer (mlserve/routing/service.py"),
    ("drift worker thread", "Monitor._drift_loop (mlserve/monitor/hub.py"),
    ("metrics counting", "V2Handlers._count (mlserve/server/http/v2.py"),
    ("rest of the v2 handler", "V2Handlers.infer (mlserve/server/http/v2.py"),
    ("lane: write the answer", "LaneConnection._write (mlserve/server/http/fastlane.py"),
    ("lane: parse the head, read the body", "LaneConnection._advance (mlserve/server/http/fastlane.py"),
    ("lane: rest of a request's task", "LaneConnection._serve (mlserve/server/http/fastlane.py"),
    ("event loop, sockets, tasks (uvloop; aiohttp when the lane is off)", ""),
)


def _parts(raw: Path) -> tuple[int, dict[str, int]]:
    """Samples per part: each stack is charged to the first part (in PARTS order) it contains."""
    total, counts = 0, collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        total += int(n)
        frames = re.sub(r":\d+\)", ")", stack)
        part = next(name for name, marker in PARTS if marker in frames)
        counts[part] += int(n)
    return total, counts


def _profile(server, body, seconds: float, cores: tuple[str, str], spy: str, raw: Path, label: str) -> str:
    wrk_point("warm-up", server, body, 64, 2, cores[1])
    record = subprocess.Popen(["taskset", "-c", cores[1], spy, "record", "-p", str(server.pid), "--gil",
                               "-r", "200", "-d", str(round(seconds)), "-f", "raw", "-o", str(raw),
                               "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # py-spy attaches before the measured load starts
    point = wrk_point(label, server, body, 64, seconds, cores[1])
    record.wait(60)
    total, counts = _parts(raw)
    us_per_request = 1e6 / point.per_cpu_s
    gil_share = total / (200 * seconds)
    lines = [f"{label} c=64: {point.req_per_s:,.0f} req/s, p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms, "
             f"{us_per_request:.0f} us of server CPU per request, GIL held {gil_share:.0%} of the time "
             f"({total} samples)", "",
             "| part | share of GIL samples | us per request |", "|---|---:|---:|"]
    gil_us = us_per_request * min(gil_share, 1.0)
    for name, _ in PARTS:
        share = counts[name] / total if total else 0.0
        lines.append(f"| {name} | {share:.1%} | {share * gil_us:.1f} |")
    lines.append(f"| engine and threads without the GIL | — | {us_per_request - gil_us:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bodies", nargs="+", choices=("json", "binary"), default=["json", "binary"])
    parser.add_argument("--no-lane", action="store_true", help="serve with [server] fast_lane = false (aiohttp only)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_c64.txt"))
    parser.add_argument("--keep-raw", type=Path, default=None, help="a folder to keep py-spy's raw stacks in")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists() or shutil.which("wrk") is None:
        sys.exit("needs py-spy (pip install py-spy) and wrk (apt-get install wrk)")
    cores = _cores()
    work = Path(tempfile.mkdtemp(prefix="mlserve-profile-"))
    try:
        _write_repository(work / "models")
        bench_key(work)
        json_body, binary_body = bodies(work)
        chosen = {"json": json_body, "binary": binary_body}
        env = {"MLSERVE_SERVER_FAST_LANE": "false"} if args.no_lane else None
        front = "aiohttp only" if args.no_lane else "fast lane"
        tables = []
        with start_server("mlserve", work, cores[0], env) as server:
            for name in args.bodies:
                tables.append(_profile(server, chosen[name], args.seconds, cores, spy, work / f"{name}.raw",
                                       f"mlserve {name} ({front})"))
        if args.keep_raw is not None:
            args.keep_raw.mkdir(parents=True, exist_ok=True)
            for name in args.bodies:
                shutil.copy(work / f"{name}.raw", args.keep_raw / f"{name}.raw")
        text = "\n\n".join(tables)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n\nraw py-spy stacks: kept only with --keep-raw\n")
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
