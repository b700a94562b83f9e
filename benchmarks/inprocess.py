"""The v2 infer handler driven in process, without sockets: microseconds of CPU per request.

    taskset -c 0 python -m benchmarks.inprocess [--body json|binary] [--concurrency 64] [--seconds 5] [--rounds 3]

Builds the server's application as `mlserve start` does (the seed MLP, an API key required, drift,
traffic manager and guard on), then C coroutines call `V2Handlers.infer` with the lane's request
object, each its next request as soon as the last is answered. What it measures is everything a
request costs past the HTTP front (the gate, decoding, the service, batching, the engine, encoding,
metrics) as CPU seconds of this process per request, with none of the kernel's or the front's
noise: for comparing two checkouts (run it from each, on the same core) more steadily than wrk can.
Pin it to one core, as the serving benchmark pins the server.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from benchmarks.runner import INFER_PATH, bench_key, bodies
from benchmarks.serving import _write_repository
from mlserve.config import load_config
from mlserve.server.app import V2, create_app
from mlserve.server.http.fastlane import LaneRequest


async def _measure(args: argparse.Namespace, work: Path) -> list[tuple[float, float]]:
    _write_repository(work / "models")
    token = bench_key(work)
    json_body, binary_body = bodies(work)
    body = json_body if args.body == "json" else binary_body
    data = body.path.read_bytes()
    config = load_config(None, overrides={
        "registry": {"models": str(work / "models")}, "auth": {"keys_file": str(work / "keys.json")},
        "server": {"port": 0, "grpc_port": 0, "log_level": "warning"},
    })
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    v2 = app[V2]
    fields = {"Authorization": f"Bearer {token}", "Content-Length": str(len(data)), "Host": "127.0.0.1",
              "Content-Type": "application/json" if body.header_length is None else "application/octet-stream"}
    if body.header_length is not None:
        fields["Inference-Header-Content-Length"] = body.header_length
    headers = CIMultiDictProxy(CIMultiDict(fields))
    match_info = {"model": "mlp", "version": "1"}
    answered, is_stopping = 0, False

    async def caller() -> None:
        nonlocal answered
        while not is_stopping:
            response = await v2.infer(LaneRequest(INFER_PATH, headers, match_info, "127.0.0.1", len(data), data))
            if response.status != 200:
                raise RuntimeError(f"status {response.status}: {response.body!r}")
            answered += 1

    callers = [asyncio.ensure_future(caller()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    rounds = []
    for _ in range(args.rounds):
        count, cpu, wall = answered, time.process_time(), time.perf_counter()
        await asyncio.sleep(args.seconds)
        count, cpu, wall = answered - count, time.process_time() - cpu, time.perf_counter() - wall
        rounds.append((cpu / count * 1e6, count / wall))
    is_stopping = True
    await asyncio.gather(*callers)
    await runner.cleanup()
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--body", choices=("json", "binary"), default="json")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mlserve-inprocess-"))
    try:
        uvloop.install()
        rounds = asyncio.run(_measure(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.body} c={args.concurrency}: " + "  ".join(f"{us:.1f} us/request ({rate:,.0f}/s)" for us, rate in rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
