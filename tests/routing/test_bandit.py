"""The bandit's policies (mlserve/routing/bandit.py) on simulated arms with fixed seeds, and its
[traffic] settings refused by name at load."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlserve.errors import ModelLoadError
from mlserve.routing.bandit import NUM_DRAWS, BanditRecord, allocate, floor_shares, thompson_p_best
from mlserve.routing.stats import Moments
from mlserve.spec import BanditSpec, TrafficSpec, read_model_config
from benchmarks.bandit import simulate

MIN_SHARE = 0.05


def _moments(values) -> Moments:
    m = Moments()
    for v in values:
        m.add(float(v))
    return m


def _run(spec: BanditSpec, rates: tuple[float, ...], num_updates: int, per_update: int, seed: int,
         is_binary: bool = True):
    """Route `per_update` requests by the split in force, draw their outcomes, reallocate; returns the
    shares after each update and the outcomes seen."""
    rng = np.random.default_rng(seed)
    arms = list(range(1, len(rates) + 1))
    outcomes = {arm: Moments() for arm in arms}
    shares = {arm: 1 / len(arms) for arm in arms}
    history = []
    for _ in range(num_updates):
        chosen = rng.choice(arms, size=per_update, p=[shares[a] for a in arms])
        for arm in chosen:
            rate = rates[arm - 1]
            outcomes[arm].add(float(rng.random() < rate) if is_binary else rng.normal(rate, 1.0))
        shares = allocate(spec, arms, outcomes, is_binary, rng).shares
        history.append(shares)
    return history, outcomes


def test_thompson_moves_the_split_to_the_better_arm_of_two():
    """Arms p = 0.3 and 0.6, 20 updates of 50 requests. After the first update the better arm's
    posterior probability of being best is essentially 1 (a gap of 0.3 over ~25 outcomes each is
    more than 3 standard errors), so the floor decides: the better arm gets 1 - min_share."""
    history, outcomes = _run(BanditSpec(min_share=MIN_SHARE), (0.3, 0.6), 20, 50, seed=7)
    final = history[-1][2]
    # Its posterior: P(best) from the outcomes the simulation produced, the same formula's z bound.
    a, b = outcomes[1], outcomes[2]
    z = (b.mean - a.mean) / math.sqrt(a.mean * (1 - a.mean) / a.n + b.mean * (1 - b.mean) / b.n)
    assert z > 4, (a, b)  # so P(best) > 1 - 3e-5, and the share is the floor's complement
    assert final == pytest.approx(1 - MIN_SHARE, abs=2 / NUM_DRAWS)
    assert min(h[1] for h in history) >= MIN_SHARE - 1e-12  # the worse arm never starves
    assert sum(h[2] for h in history[-10:]) / 10 >= 0.9
    assert b.n > 5 * a.n


def test_benchmark_regret_of_thompson_is_a_fraction_of_the_fixed_split():
    """The benchmark's own simulation (fixed seeds): on 0.3 vs 0.6 the fixed split loses 0.15 a
    request, Thompson with a 0.05 floor about 0.05 x 0.3 = 0.015 once it has learned."""
    fixed = simulate(None, (0.3, 0.6), 40, 100, seed=3)
    thompson = simulate(BanditSpec(min_share=MIN_SHARE), (0.3, 0.6), 40, 100, seed=3)
    assert fixed.regret == pytest.approx(0.15 * 4000, rel=0.05)
    assert thompson.regret <= 0.015 * 4000 * 1.3 + 0.15 * 100  # the floor's price, plus the first (even) batch
    assert thompson.best_share_last >= 0.9


def test_numeric_outcomes_use_a_normal_posterior():
    history, outcomes = _run(BanditSpec(min_share=0.1), (0.0, 0.5), 20, 40, seed=11, is_binary=False)
    assert history[-1][2] == pytest.approx(0.9, abs=0.02)
    assert outcomes[2].n > outcomes[1].n


def test_epsilon_greedy_spreads_epsilon_and_gives_the_rest_to_the_best_mean():
    spec = BanditSpec(policy="epsilon_greedy", epsilon=0.2, min_share=0.0)
    rng = np.random.default_rng(0)
    outcomes = {1: _moments([1, 0]), 2: _moments([1, 1, 0]), 3: _moments([0])}
    shares = allocate(spec, [1, 2, 3], outcomes, True, rng).shares
    assert shares == pytest.approx({1: 0.2 / 3, 2: 0.8 + 0.2 / 3, 3: 0.2 / 3})
    # An arm with no outcomes yet is tried first.
    shares = allocate(spec, [1, 2], {1: _moments([1, 1])}, True, rng).shares
    assert shares[2] == pytest.approx(0.9)


def test_equal_evidence_gives_equal_shares_and_a_seed_gives_the_same_draws():
    moments = [_moments([1, 0] * 20), _moments([1, 0] * 20)]
    p = thompson_p_best(moments, True, np.random.default_rng(5))
    assert p[0] == pytest.approx(0.5, abs=4 / math.sqrt(NUM_DRAWS))
    assert p == thompson_p_best(moments, True, np.random.default_rng(5))
    assert thompson_p_best([Moments(), Moments()], False, np.random.default_rng(5))[0] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("raw, floor, expected", [
    ([1.0, 0.0], 0.05, [0.95, 0.05]),
    ([0.9, 0.1, 0.0], 0.05, [0.855, 0.095, 0.05]),
    ([0.0, 0.0, 0.0], 0.1, [1 / 3] * 3),
    ([1.0, 0.0, 0.0], 1 / 3, [1 / 3] * 3),
    ([0.6, 0.4], 0.0, [0.6, 0.4]),
])
def test_floor_shares_lifts_arms_to_the_floor_and_renormalises_the_rest(raw, floor, expected):
    shares = floor_shares(raw, floor)
    assert shares == pytest.approx(expected) and sum(shares) == pytest.approx(1.0)
    assert min(shares) >= floor - 1e-12


def test_a_record_round_trips_and_bad_data_is_refused_by_name():
    spec = BanditSpec()
    allocation = allocate(spec, [1, 2], {1: _moments([0, 0]), 2: _moments([1, 1])}, True, np.random.default_rng(1))
    record = BanditRecord.of(allocation, {1: _moments([0, 0])}, 1.5e9, "host:1").with_updates(3)
    assert BanditRecord.from_json(record.to_json()) == record
    assert record.outcomes == {1: 2, 2: 0}
    with pytest.raises(ValueError, match="'bandit'"):
        BanditRecord.from_json({**record.to_json(), "by": 7})
    with pytest.raises(ValueError, match="split"):
        BanditRecord.from_json({**record.to_json(), "split": {"x": 1}})


# -- settings ----------------------------------------------------------------------------------------

def test_bandit_settings_parse():
    spec = TrafficSpec.parse({"bandit": {"policy": "thompson", "min_share": 0.05, "update_s": 10}})
    assert spec.bandit == BanditSpec("thompson", 0.05, 10.0)
    spec = TrafficSpec.parse({"split": {"1": 1, "2": 1, "3": 1}, "bandit": {"policy": "epsilon_greedy", "epsilon": 0.2,
                                                                         "min_share": 0.3}})
    assert spec.bandit.explore == 0.2 and BanditSpec(policy="epsilon_greedy").explore == 0.1


@pytest.mark.parametrize("bandit, split, message", [
    ({"polcy": "thompson"}, None, r"\[traffic.bandit\] unknown key\(s\) polcy"),
    ({"policy": "ucb1"}, None, r"\[traffic.bandit\] policy must be one of thompson, epsilon_greedy, got 'ucb1'"),
    ({"update_s": 0}, None, r"\[traffic.bandit\] update_s must be > 0"),
    ({"update_s": -5}, None, r"\[traffic.bandit\] update_s must be > 0"),
    ({"update_s": 0.001}, None, r"\[traffic.bandit\] update_s must lie in 0.05..86400"),
    ({"update_s": "10s"}, None, r"\[traffic.bandit\] update_s must be a number"),
    ({"min_share": -0.01}, None, r"\[traffic.bandit\] min_share must lie in 0..0.5"),
    ({"min_share": 0.6}, None, r"\[traffic.bandit\] min_share must lie in 0..0.5"),
    ({"min_share": 0.34}, {"1": 1, "2": 1, "3": 1}, r"\[traffic\] bandit min_share must lie in 0..1/3"),
    ({"epsilon": 0.1}, None, r"\[traffic.bandit\] epsilon applies only to policy = \"epsilon_greedy\""),
    ({"policy": "epsilon_greedy", "epsilon": 1.5}, None, r"\[traffic.bandit\] epsilon must lie in 0..1"),
    ({}, {"1": 100}, r"\[traffic\] bandit needs 2 or more arms"),
    ("thompson", None, r"\[traffic.bandit\] must be a table"),
])
def test_bad_bandit_settings_are_refused_by_name(bandit, split, message):
    raw = {"bandit": bandit, **({"split": split} if split else {})}
    with pytest.raises(ValueError, match=message):
        TrafficSpec.parse(raw)


def test_a_model_toml_with_a_bad_bandit_does_not_load_and_says_which_key(tmp_path):
    path = tmp_path / "model.toml"
    path.write_text('[traffic]\nsplit = { "1" = 50, "2" = 50 }\nbandit = { policy = "thompson", min_share = 0.7 }\n')
    with pytest.raises(ModelLoadError, match=r"model.toml: \[traffic.bandit\] min_share must lie in 0..0.5"):
        read_model_config(path)
    path.write_text('[traffic.bandit]\npolicy = "thompson"\nupdate_s = 0\n')
    with pytest.raises(ModelLoadError, match=r"\[traffic.bandit\] update_s must be > 0"):
        read_model_config(path)


def test_more_ready_arms_than_the_floor_allows_share_evenly():
    """No split: the arms are every ready version, so a floor checked against two arms (0.5) can meet
    three; each then gets 1/3 rather than an impossible half."""
    shares = allocate(BanditSpec(min_share=0.5), [1, 2, 3], {1: _moments([1] * 20)}, True,
                      np.random.default_rng(2)).shares
    assert shares == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 1 / 3})
