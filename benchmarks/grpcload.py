"""Closed-loop gRPC load generator (wrk has no gRPC): `--concurrency` calls in flight on one channel,
each sending the next ModelInfer when the last came back. The request is serialized once and sent
as bytes, so the generator spends its time on the wire, not on protobuf. With `--stream` the same
requests go over one ModelStreamInfer stream (how Triton's clients get throughput), `--concurrency`
of them outstanding on it; with `--streams N` over N streams on the channel (a tritonclient
InferenceServerClient holds one stream at a time, so N callers with a client each).

    python -m benchmarks.grpcload --target 127.0.0.1:8001 --body request.pb --concurrency 64 --seconds 4
        [--stream [--streams 64]]

Prints one JSON line: requests, duration_us, p50/p95/p99_us, errors and statuses by gRPC code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


def write_body(path: Path, model: str, version: str, x: np.ndarray) -> Path:
    """A ModelInferRequest for input `x` (FP32, raw_input_contents), serialized to `path`."""
    from mlserve.server.proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    path.write_bytes(request.SerializeToString())
    return path


async def _run(target: str, body: bytes, concurrency: int, seconds: float, num_channels: int = 1,
               token: str = "") -> dict:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(num_channels)]
    try:
        calls = [channel.unary_unary(METHOD) for channel in channels]  # bytes in, bytes out
        for channel in channels:
            await channel.channel_ready()
        started = time.monotonic()
        stop_at = started + seconds

        async def worker(call) -> None:
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    await call(body, timeout=10, metadata=metadata)
                    statuses["OK"] += 1
                    latencies.append(time.monotonic() - sent)
                except grpc.aio.AioRpcError as error:
                    statuses[error.code().name] += 1

        await asyncio.gather(*(worker(calls[i % num_channels]) for i in range(concurrency)))
        duration = time.monotonic() - started
    finally:
        for channel in channels:
            await channel.close()
    ordered = np.sort(np.array(latencies or [0.0])) * 1e6
    return {
        "requests": len(latencies), "duration_us": duration * 1e6,
        "p50_us": float(np.percentile(ordered, 50)), "p95_us": float(np.percentile(ordered, 95)),
        "p99_us": float(np.percentile(ordered, 99)),
        "errors": sum(v for k, v in statuses.items() if k != "OK"), "statuses": dict(statuses),
    }


async def _run_stream(target: str, body: bytes, concurrency: int, seconds: float, token: str = "",
                      num_streams: int = 1) -> dict:
    """`num_streams` bidirectional streams on one channel, `concurrency` requests outstanding over them
    in all; on each, a new request leaves each time an answer comes back."""
    from collections import deque

    from mlserve.server.proto import grpc_service_pb2 as pb

    metadata = (("authorization", f"Bearer {token}"),) if token else None
    latencies: list[float] = []
    statuses: Counter[str] = Counter()

    async def one_stream(channel, outstanding: int, stop_at: float) -> None:
        sent_at: deque[float] = deque()
        call = channel.stream_stream(STREAM_METHOD)(metadata=metadata)  # bytes in, bytes out
        for _ in range(outstanding):
            sent_at.append(time.monotonic())
            await call.write(body)
        while sent_at:
            answer = await call.read()
            if answer is grpc.aio.EOF:
                statuses["EOF"] += len(sent_at)
                break
            latency = time.monotonic() - sent_at.popleft()
            if pb.ModelStreamInferResponse.FromString(answer).error_message:
                statuses["STREAM_ERROR"] += 1
            else:
                statuses["OK"] += 1
                latencies.append(latency)
            if time.monotonic() < stop_at:
                sent_at.append(time.monotonic())
                await call.write(body)
        await call.done_writing()

    async with grpc.aio.insecure_channel(target) as channel:
        await channel.channel_ready()
        started = time.monotonic()
        shares = [concurrency // num_streams + (i < concurrency % num_streams) for i in range(num_streams)]
        await asyncio.gather(*(one_stream(channel, n, started + seconds) for n in shares if n))
        duration = time.monotonic() - started
    ordered = np.sort(np.array(latencies or [0.0])) * 1e6
    return {
        "requests": len(latencies), "duration_us": duration * 1e6,
        "p50_us": float(np.percentile(ordered, 50)), "p95_us": float(np.percentile(ordered, 95)),
        "p99_us": float(np.percentile(ordered, 99)),
        "errors": sum(v for k, v in statuses.items() if k != "OK"), "statuses": dict(statuses),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--body", type=Path, required=True, help="a serialized ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--channels", type=int, default=1, help="connections the calls are spread over")
    parser.add_argument("--token", default="", help="API key sent as 'authorization' metadata")
    parser.add_argument("--stream", action="store_true", help="ModelStreamInfer on one stream instead of unary calls")
    parser.add_argument("--streams", type=int, default=1, help="with --stream: streams the concurrency is spread over")
    args = parser.parse_args(argv)
    if args.stream:
        result = asyncio.run(_run_stream(args.target, args.body.read_bytes(), args.concurrency, args.seconds,
                                         args.token, args.streams))
        print(json.dumps(result))
        return 0
    result = asyncio.run(_run(args.target, args.body.read_bytes(), args.concurrency, args.seconds, args.channels,
                              args.token))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
