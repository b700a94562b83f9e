"""Makes the README's picture of the status page: a live server over the test repository under a
steady mix of traffic (a split with feedback, a shifted feature, a few completions), photographed
in headless Chromium after half a minute.

    .venv/bin/python -m tests.ui.screenshot docs/status-page.png
"""

from __future__ import annotations

import math
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tests.server_process import MlserveProcess
from tests.ui.browser import chromium, console_errors
from tests.ui.conftest import write_ui_repository
from tests.ui.traffic import call, drive

LOAD_S = 40.0
SHOOT_AFTER_S = 28.0


def _load(url: str, seconds: float) -> None:
    rng = np.random.default_rng(1)
    stop, i = time.monotonic() + seconds, 0
    while time.monotonic() < stop:
        i += 1
        rows = 1 + int(3 * (1 + math.sin(i / 15)))
        body = {"id": f"q{i}", "inputs": [{"name": "x", "shape": [rows, 768], "datatype": "FP32",
                                           "data": rng.random((rows, 768), np.float32).ravel().tolist()}]}
        _, answer, _ = call(url + "/v2/models/mlp/infer", body)
        rate = 0.3 if answer["model_version"] == "1" else 0.36
        call(url + "/v2/models/mlp/feedback", {"id": f"q{i}", "value": int(rng.random() < rate)})
        x = rng.standard_normal((20, 4)).astype(np.float32)
        x[:, 2] += 1.0
        call(url + "/v2/models/drifty/infer",
             {"inputs": [{"name": "x", "shape": [20, 4], "datatype": "FP32", "data": x.ravel().tolist()}]})
        if i % 40 == 0:
            call(url + "/v1/completions", {"model": "tiny-gpt2", "prompt": "the sea is", "max_tokens": 16})


def main(out: Path) -> int:
    work = Path(tempfile.mkdtemp(prefix="mlserve-shot-"))
    root = write_ui_repository(work / "repo", with_llm=True)
    proc = MlserveProcess(root, log_path=work / "mlserve.log", env={"MLSERVE_MONITOR_STATUS_INTERVAL_S": "1"})
    proc.wait_ready()
    try:
        drive(proc.url)
        loader = threading.Thread(target=_load, args=(proc.url, LOAD_S))
        loader.start()
        time.sleep(SHOOT_AFTER_S)
        with chromium() as driver:
            driver.set_window_size(1300, 1250)
            driver.get(proc.url + "/")
            time.sleep(5)
            driver.save_screenshot(str(out))
            errors = console_errors(driver)
        loader.join()
    finally:
        proc.stop()
    print(f"wrote {out}; console errors: {errors or 'none'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "status-page.png")))
