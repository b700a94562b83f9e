"""The accuracy gate and the winner's margin, on figures made up for each budget."""

from __future__ import annotations

import dataclasses

import pytest

from mlserve.optimize.evaluate import Figures
from mlserve.optimize.gate import GateSettings, gain, rejection

SOURCE = Figures(0.0, 0.0, 1.0, 0.90, 1.0, p50_ms=2.0, p99_ms=4.0, throughput_rps=1000.0, num_bytes=4000)


def _candidate(**changes) -> Figures:
    return dataclasses.replace(SOURCE, **changes)


def test_top1_budget():
    gate = GateSettings(max_top1_drop=0.01)
    assert rejection(_candidate(top1_agreement=0.995), SOURCE, gate) is None
    assert "top-1 agreement 0.9800" in rejection(_candidate(top1_agreement=0.98), SOURCE, gate)


def test_abs_diff_budget_applies_only_when_given():
    assert rejection(_candidate(max_abs_diff=5.0), SOURCE, GateSettings()) is None
    assert "max abs diff 5" in rejection(_candidate(max_abs_diff=5.0), SOURCE, GateSettings(max_abs_diff=0.1))


def test_metric_budget_against_the_source_metric():
    gate = GateSettings(max_top1_drop=None, max_metric_drop=0.02)
    assert rejection(_candidate(metric=0.89), SOURCE, gate) is None
    assert "accuracy 0.8700: drop 0.0300" in rejection(_candidate(metric=0.87), SOURCE, gate)


def test_cosine_budget_for_embeddings():
    embedding = _candidate(top1_agreement=None, metric=None, cosine=0.995)
    assert rejection(embedding, SOURCE, GateSettings(min_cosine=0.99)) is None
    assert "cosine to the source 0.9950 < 0.999" in rejection(embedding, SOURCE, GateSettings(min_cosine=0.999))


def test_a_candidate_no_budget_applies_to_is_rejected():
    unmeasured = _candidate(top1_agreement=None, metric=None)
    why = rejection(unmeasured, dataclasses.replace(SOURCE, metric=None), GateSettings())
    assert "--max-abs-diff or --min-cosine" in why


def test_gain_per_objective():
    fast = _candidate(throughput_rps=3000.0, p50_ms=0.5, num_bytes=1000)
    assert gain(fast, SOURCE, "throughput") == pytest.approx(3.0)
    assert gain(fast, SOURCE, "latency") == pytest.approx(4.0)
    assert gain(fast, SOURCE, "size") == pytest.approx(4.0)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="objective"):
        GateSettings(objective="speed")
    with pytest.raises(ValueError, match="min_gain"):
        GateSettings(min_gain=0.5)
    with pytest.raises(ValueError, match="max_top1_drop"):
        GateSettings(max_top1_drop=-1)
