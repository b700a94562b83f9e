"""What shared state costs: mlserve with `--state redis` beside mlserve with the default in-memory
state, side by side in one run.

    python -m benchmarks.state [--seconds 4] [--repeats 3] [--concurrency 16 64]

Both servers serve the seed MLP (768-1024-1024-10, ONNX) as two versions under a 50/50 A/B split,
through the unversioned route (so every request is routed, assigned and counted for the experiment),
with an API key that carries a rate limit and a daily quota high enough never to refuse (so every
request also spends from the cluster-wide budgets). The only difference is where that state lives:
the process's memory, or a real redis-server (Debian's, on loopback). Servers share one core, the
load generator (wrk, closed loop) and redis-server the other; points are interleaved, which server
goes first alternating by round (memory, redis, redis, memory, ...), and the median round of each is
kept.

Goal (issue 28): redis >= 0.95x memory in req/s at c=64, and p99 <= 1.1x.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import runner
from benchmarks.runner import Point, bodies, start_server, wrk_point
from benchmarks.serving import _median as median_round

ROUTED_PATH = "/v2/models/mlp/infer"
SPLIT_TOML = ('max_batch_size = 64\nmax_queue_delay_us = 2000\nmax_queue_size = 1024\nintra_op_threads = 1\n'
              'version_policy = { all = true }\n[traffic]\nsplit = { "1" = 50, "2" = 50 }\n')
MEMORY, REDIS = "mlserve, state in memory", "mlserve, state on redis"


def _write_repository(root: Path) -> None:
    from mlserve.examples import write_mlp_onnx

    for version in ("1", "2"):
        write_mlp_onnx(root / "mlp" / version / "model.onnx", seed=1)
    (root / "mlp" / "model.toml").write_text(SPLIT_TOML)


def _limited_key(work: Path) -> None:
    """The key every request carries: a rate and a quota far above what the run sends, so both are
    spent from on every request and never refuse."""
    from mlserve.keys import create_key

    (work / "bench.token").write_text(create_key(work / "keys.json", "bench", ("infer",), rps=1e6, quota=10**9))


@contextlib.contextmanager
def _redis_server(work: Path, core: str):
    port = runner._free_port()
    proc = subprocess.Popen(["taskset", "-c", core, "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


def run(args: argparse.Namespace) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("the benchmark needs two cores: one for the servers, one for the load generator and redis")
    server_core, load_core = str(cores[0]), str(cores[1])
    work = Path(tempfile.mkdtemp(prefix="mlserve-bench-state-"))
    points: list[Point] = []
    try:
        _write_repository(work / "models")
        _limited_key(work)
        json_body, _ = bodies(work)
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(_redis_server(work, load_core))
            memory = stack.enter_context(start_server("mlserve", work, server_core))
            shared = stack.enter_context(start_server("mlserve", work, server_core, {"MLSERVE_STATE_URL": url}))
            for c in args.concurrency:
                rounds: dict[str, list[Point]] = {MEMORY: [], REDIS: []}
                for round_ in range(args.repeats):
                    order = ((MEMORY, memory), (REDIS, shared))  # which goes first alternates by round
                    for name, server in order if round_ % 2 == 0 else order[::-1]:
                        print(f"  {name}: closed loop c={c}", file=sys.stderr, flush=True)
                        rounds[name].append(wrk_point(name, server, json_body, c, args.seconds, load_core,
                                                      count_status=True, path=ROUTED_PATH))
                points += [median_round(r) for r in rounds.values()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds_per_point": args.seconds,
            "repeats": args.repeats, "points": [asdict(p) for p in points]}


def table(results: dict) -> str:
    points = {(p["server"], p["load"]): p for p in results["points"]}
    lines = ["| load | memory req/s | redis req/s | redis/memory req/s | memory p99 ms | redis p99 ms | redis/memory p99 | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for load in sorted({p["load"] for p in results["points"]}, key=lambda x: int(x.split("=")[1])):
        m, r = points[(MEMORY, load)], points[(REDIS, load)]
        lines.append(f"| {load} | {m['req_per_s']:.0f} | {r['req_per_s']:.0f} | {r['req_per_s'] / m['req_per_s']:.2f} | "
                     f"{m['p99_ms']:.1f} | {r['p99_ms']:.1f} | {r['p99_ms'] / m['p99_ms']:.2f} | "
                     f"{m['errors'] + r['errors']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each load point (default 4)")
    parser.add_argument("--repeats", type=int, default=4, help="interleaved rounds per point; the median is kept")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    for tool in ("wrk", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian: apt-get install -y wrk redis-server)")
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "state.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
