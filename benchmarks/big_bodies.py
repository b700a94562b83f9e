"""Does one client's huge body freeze everybody else? Small-request latency alone and beside a client
sending near-64 MiB JSON bodies in a loop.

    python -m benchmarks.big_bodies [--seconds 10]

Serves the seed MLP; a prober sends one-row JSON requests one at a time (closed loop) for
`--seconds`, first alone, then while another client posts JSON bodies just under the 64 MiB body
limit (about 16M numbers, to a model that refuses them after they are decoded, so no engine time is
spent on them). Prints the prober's p50/p99 in both phases and the ratio of the p99s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tests.server_process import MlserveProcess

BIG_ROWS, BIG_WIDTH = 16_000, 1_024


def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _probe(url: str, body: bytes, seconds: float) -> np.ndarray:
    latencies = []
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        sent = time.monotonic()
        assert _post(url, body) == 200
        latencies.append(time.monotonic() - sent)
    return np.array(latencies) * 1e3


def _big_body() -> bytes:
    # "0.5," is 4 bytes a number: 16,000 x 1,024 numbers is about 62.5 MiB of JSON.
    data = ",".join(["0.5"] * (BIG_ROWS * BIG_WIDTH))
    return (f'{{"inputs":[{{"name":"x","shape":[{BIG_ROWS},{BIG_WIDTH}],"datatype":"FP32","data":[{data}]}}]}}').encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    from mlserve.examples import write_mlp_onnx

    work = Path(tempfile.mkdtemp(prefix="mlserve-big-"))
    try:
        write_mlp_onnx(work / "models" / "mlp" / "1" / "model.onnx", seed=1)
        (work / "models" / "mlp" / "model.toml").write_text("max_batch_size = 64\nmax_queue_delay_us = 0\n")
        env = {"MLSERVE_LIMITS_MAX_TENSOR_ELEMENTS": str(BIG_ROWS * BIG_WIDTH),
               "MLSERVE_LIMITS_MAX_BATCH_ROWS": str(BIG_ROWS)}
        server = MlserveProcess(work / "models", log_path=work / "log", env=env).wait_ready()
        try:
            url = f"{server.url}/v2/models/mlp/infer"
            small = json.dumps({"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32",
                                            "data": [0.01] * 768}]}).encode()
            _probe(url, small, 1.0)  # warm-up
            alone = _probe(url, small, args.seconds)
            big, stop, sent = _big_body(), threading.Event(), []

            def flood() -> None:
                while not stop.is_set():
                    sent.append(_post(url, big))

            flooder = threading.Thread(target=flood)
            flooder.start()
            while not sent:  # the first big body was answered: the flood is under way
                time.sleep(0.05)
            beside = _probe(url, small, args.seconds)
            stop.set()
            flooder.join(120)
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p99_alone, p99_beside = np.percentile(alone, 99), np.percentile(beside, 99)
    print(f"big body: {len(big) / 2**20:.1f} MiB, {len(sent)} sent, statuses {sorted(set(sent))}")
    print(f"small requests alone:      {len(alone)} requests, p50 {np.percentile(alone, 50):.2f} ms, p99 {p99_alone:.2f} ms, max {alone.max():.1f} ms")
    print(f"beside the big bodies:     {len(beside)} requests, p50 {np.percentile(beside, 50):.2f} ms, p99 {p99_beside:.2f} ms, max {beside.max():.1f} ms")
    print(f"p99 beside / p99 alone:    {p99_beside / p99_alone:.2f} (target <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
