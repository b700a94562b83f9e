"""Regret of the bandit's policies on synthetic Bernoulli arms: a pure simulation of the policy code
the server runs (mlserve/routing/bandit.py), no server.

    .venv/bin/python -m benchmarks.bandit [--runs 10] [--updates 100] [--per-update 100]

Each run routes `updates` batches of `per-update` requests by the split in force (a multinomial draw),
draws each request's 0/1 outcome from its arm's rate, then asks the policy for the next split from
all outcomes so far, as the server does every `update_s`. Regret is the expected reward lost against
always choosing the best arm, summed over every request: sum of (best rate - chosen arm's rate).
Fixed seeds: run r of every policy sees the same seed, so the comparison is paired.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from mlserve.routing.bandit import allocate
from mlserve.routing.stats import Moments
from mlserve.spec import BanditSpec

SCENARIOS = {
    "2 arms 0.30 / 0.60": (0.30, 0.60),
    "2 arms 0.10 / 0.12": (0.10, 0.12),
    "3 arms 0.05 / 0.06 / 0.08": (0.05, 0.06, 0.08),
}
POLICIES = {
    "fixed equal split": None,
    "epsilon_greedy (epsilon 0.1)": BanditSpec(policy="epsilon_greedy", epsilon=0.1, min_share=0.0),
    "thompson (min_share 0.05)": BanditSpec(policy="thompson", min_share=0.05),
    "thompson (min_share 0)": BanditSpec(policy="thompson", min_share=0.0),
}


@dataclass(frozen=True, slots=True)
class RunResult:
    regret: float
    best_share_last: float
    """Share of the requests that went to the best arm over the last tenth of the run."""


def simulate(spec: BanditSpec | None, rates: tuple[float, ...], num_updates: int, per_update: int,
             seed: int) -> RunResult:
    """One run of `spec` (None: the fixed equal split) on Bernoulli arms with `rates`."""
    traffic_rng = np.random.default_rng(seed)
    policy_rng = np.random.default_rng(seed + 1_000_003)
    arms = list(range(1, len(rates) + 1))
    p = np.array(rates)
    best = float(p.max())
    num = np.zeros(len(arms))
    wins = np.zeros(len(arms))
    shares = np.full(len(arms), 1 / len(arms))
    regret = 0.0
    tail = max(1, num_updates // 10)
    tail_best = tail_total = 0
    for update in range(num_updates):
        counts = traffic_rng.multinomial(per_update, shares)
        num += counts
        wins += traffic_rng.binomial(counts, p)
        regret += float(counts @ (best - p))
        if update >= num_updates - tail:
            tail_best += int(counts[p == best].sum())
            tail_total += per_update
        if spec is not None:
            outcomes = {arm: _moments(num[i], wins[i]) for i, arm in enumerate(arms)}
            allocation = allocate(spec, arms, outcomes, True, policy_rng)
            shares = np.array([allocation.shares[arm] for arm in arms])
            shares = shares / shares.sum()
    return RunResult(regret, tail_best / tail_total)


def _moments(n: float, s: float) -> Moments:
    """The moments of n outcomes of 0/1 with s ones, as the shared sums give them."""
    if n <= 0:
        return Moments()
    return Moments(int(n), s / n, max(0.0, s - s * s / n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--per-update", type=int, default=100)
    args = parser.parse_args()
    if args.runs < 2 or args.updates < 1 or args.per_update < 1:
        parser.error("--runs must be >= 2 (for a spread), --updates and --per-update >= 1")
    started = time.perf_counter()
    print(f"{args.runs} runs x {args.updates} updates x {args.per_update} requests "
          f"({args.updates * args.per_update} requests a run); "
          "regret = sum over requests of best rate - chosen rate\n")
    print("| arms (success rates) | policy | regret, mean ± sd | / fixed split | worst run | best arm's share, last 10% |")
    print("|---|---|---:|---:|---:|---:|")
    for scenario, rates in SCENARIOS.items():
        baseline = None
        for name, spec in POLICIES.items():
            results = [simulate(spec, rates, args.updates, args.per_update, seed) for seed in range(args.runs)]
            regrets = np.array([r.regret for r in results])
            mean = float(regrets.mean())
            baseline = mean if baseline is None else baseline
            share = float(np.mean([r.best_share_last for r in results]))
            print(f"| {scenario} | {name} | {mean:.1f} ± {regrets.std(ddof=1):.1f} | {mean / baseline:.2f} "
                  f"| {regrets.max():.1f} | {share:.3f} |")
    print(f"\n{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
