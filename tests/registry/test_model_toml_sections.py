"""A bad value in any model.toml section makes that model UNAVAILABLE in /v2/repository/index with
the key named, while the rest of the repository serves. In-process: the real app and loader,
aiohttp's test client, a real ONNX model."""

from __future__ import annotations

import asyncio

import pytest

from mlserve.spec import parse_model_config
from tests.routing.models import write_scale_onnx
from tests.server.inproc import app_client, config_for

BAD_SECTIONS = [
    ("top-level", 'max_batch_size = "many"', "max_batch_size must be an integer"),
    ("top-level-unknown", "max_batch = 8", "unknown key(s) max_batch"),
    ("background-share", "background_share = 0.9", "background_share must lie in 0..0.5"),
    ("guard", "hang_timeout_us = 0", "hang_timeout_us must be a positive integer"),
    ("guard-type", 'hang_timeout_us = "1s"', "hang_timeout_us must be an integer"),
    ("version-policy", "version_policy = { latest = 0 }", "version_policy"),
    ("inputs", '[[inputs]]\nname = "x"\ndatatype = "FLOAT"\nshape = [-1, 3]', "unknown datatype 'FLOAT'"),
    ("llm", "[llm]\nblock_size = 0", "[llm] block_size must be a positive integer"),
    ("llm-type", '[llm]\nkv_cache_mb = "lots"', "[llm] kv_cache_mb must be a number"),
    ("llm-unknown", "[llm]\nblocksize = 16", "[llm] unknown key(s) blocksize"),
    ("llm-graphs", '[llm]\ncuda_graphs = "on"', "[llm] cuda_graphs must be true or false"),
    ("llm-graph-sizes", "[llm]\ncuda_graph_batch_sizes = [8, 0]",
     "[llm] cuda_graph_batch_sizes must be a non-empty list of positive integers"),
    ("llm-graph-sizes-type", "[llm]\ncuda_graph_batch_sizes = 8", "[llm] cuda_graph_batch_sizes must be a list of ints"),
    ("drift", "[drift]\npsi_warn = 0.5\npsi_alert = 0.2", "[drift] need 0 <= psi_warn <= psi_alert"),
    ("drift-type", '[drift]\nwindow = "big"', "[drift] window must be an integer"),
    ("traffic", '[traffic]\nsplit = { "1" = "lots" }', "[traffic] split: weight of version 1"),
    ("traffic-breaker", "[traffic.breaker]\nerror_rate = 2", "[traffic.breaker] error_rate must lie in (0, 1]"),
    ("traffic-unknown", "[traffic]\nsplitt = {}", "[traffic] unknown key(s) splitt"),
    ("traffic-bandit", '[traffic]\nbandit = { policy = "ucb1" }', "[traffic.bandit] policy must be one of"),
    ("traffic-bandit-unknown", "[traffic.bandit]\nupdate = 5", "[traffic.bandit] unknown key(s) update"),
    ("traffic-bandit-update", "[traffic.bandit]\nupdate_s = 0", "[traffic.bandit] update_s must be > 0"),
    ("warmup", "[warmup]\nbatch_sizes = [0]", "[warmup] batch_sizes must be positive integers"),
    ("warmup-type", '[warmup]\nenabled = "no"', "[warmup] enabled must be true or false"),
    ("warmup-unknown", '[warmup]\nfiles = "x.npz"', "[warmup] unknown key(s) files"),
]


async def _index(root) -> dict[str, list[dict]]:
    async with app_client(config_for(root)) as client:
        response = await client.post("/v2/repository/index", json={"reload": False})
        assert response.status == 200
        rows = await response.json()
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["name"], []).append(row)
    return by_model


@pytest.mark.parametrize("section, toml, reason", BAD_SECTIONS, ids=[c[0] for c in BAD_SECTIONS])
def test_bad_value_makes_the_model_unavailable_with_the_reason(tmp_path, section, toml, reason):
    write_scale_onnx(tmp_path / "good" / "1" / "model.onnx", 2.0)
    write_scale_onnx(tmp_path / "bad" / "1" / "model.onnx", 2.0)
    (tmp_path / "bad" / "model.toml").write_text(toml + "\n")
    rows = asyncio.run(_index(tmp_path))
    assert [r["state"] for r in rows["good"]] == ["READY"]
    (bad,) = rows["bad"]
    assert bad["state"] == "UNAVAILABLE"
    assert bad["reason"].startswith("bad/model.toml: ") and reason in bad["reason"], bad["reason"]


def test_every_section_set_well_loads(tmp_path):
    """The same sections with good values: the model is READY, so the failures above are the values'."""
    write_scale_onnx(tmp_path / "full" / "1" / "model.onnx", 2.0)
    (tmp_path / "full" / "model.toml").write_text(
        "max_batch_size = 8\nhang_timeout_us = 5000000\nversion_policy = { latest = 1 }\n"
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, 3]\n'
        "[drift]\nwindow = 500\nmin_rows = 100\n"
        '[traffic]\nsplit = { "1" = 100 }\n[traffic.breaker]\nerror_rate = 0.5\n'
        "[warmup]\nbatch_sizes = [1, 8]\nenabled = true\n"
    )
    rows = asyncio.run(_index(tmp_path))
    assert [(r["version"], r["state"]) for r in rows["full"]] == [("1", "READY")]
    # [llm] is read by generation models alone (an ONNX model refuses it): its good values parse
    llm = parse_model_config({"llm": {"block_size": 16, "cuda_graphs": True, "cuda_graph_batch_sizes": [1, 8]}}).llm
    assert llm.block_size == 16 and llm.cuda_graphs and llm.cuda_graph_batch_sizes == (1, 8)
