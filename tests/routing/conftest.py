from __future__ import annotations

import pytest

from tests.models import write_slow_onnx
from tests.routing.models import write_failing_onnx, write_scale_onnx
from tests.server_process import serving

COMMON = 'version_policy = { all = true }\nmax_batch_size = 8\nmax_queue_delay_us = 500\n'

REPOSITORY = {
    # model: ({version: (kind, scale)}, [traffic] table)
    "ab": ({1: ("scale", 1.0), 2: ("scale", 2.0)},
           'split = { "1" = 90, "2" = 10 }\nsticky_key = "header:X-User-Id"\nsalt = "ab"\n'),
    "exp": ({1: ("scale", 1.0), 2: ("scale", 2.0)},
            'split = { "1" = 50, "2" = 50 }\nsticky_key = "param:user"\nexperiment = { outcome = "binary" }\n'),
    "brk": ({1: ("scale", 1.0), 2: ("failing", 2.0)}, "breaker = { consecutive_failures = 3, open_s = 2.0 }\n"),
    "canary": ({1: ("scale", 1.0), 2: ("failing", 2.0), 3: ("scale", 3.0)},
               'split = { "1" = 100 }\nbreaker = { consecutive_failures = 1000, error_rate = 1.0 }\n'),
    "sh": ({1: ("scale", 1.0), 2: ("scale", 2.0)}, 'split = { "1" = 100 }\nshadow = { version = "2", percent = 100 }\n'),
    # Same inputs, one MatMul against six hundred: the canary is slow, never wrong.
    "slowc": ({1: ("slow", 1), 2: ("slow", 600)}, 'split = { "1" = 100 }\n'),
    "conc": ({1: ("scale", 1.0), 2: ("failing", 2.0)}, "breaker = { consecutive_failures = 5, open_s = 60.0 }\n"),
    "named": ({1: ("failing", 5.0)}, 'fallback = "ab"\nbreaker = { consecutive_failures = 2, open_s = 60.0 }\n'),
}


def write_traffic_repository(root):
    for model, (versions, traffic) in REPOSITORY.items():
        for version, (kind, scale) in versions.items():
            path = root / model / str(version) / "model.onnx"
            if kind == "slow":
                write_slow_onnx(path, width=256, depth=int(scale))
            else:
                (write_scale_onnx if kind == "scale" else write_failing_onnx)(path, scale)
        (root / model / "model.toml").write_text(COMMON + "\n[traffic]\n" + traffic)
    return root


@pytest.fixture(scope="module")
def traffic_repo(tmp_path_factory):
    return write_traffic_repository(tmp_path_factory.mktemp("traffic_repo"))


@pytest.fixture(scope="module")
def traffic_server(traffic_repo, tmp_path_factory):
    with serving(traffic_repo, log_path=tmp_path_factory.mktemp("logs") / "mlserve.log") as proc:
        yield proc
