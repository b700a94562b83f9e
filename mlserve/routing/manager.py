"""The traffic manager: picks a version by split, guards it with its breaker, falls back, records
results for experiments and rollouts, copies requests to shadows, and drives rollouts.

Everything here runs on the event loop thread, so the per-model state needs no locks.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any, Mapping

from mlserve.errors import Conflict, InvalidInput, ModelNotFound
from mlserve.monitor.metrics import Metrics
from mlserve.registry.loader import HotSwapLoader, ServedModel, ServedVersion
from mlserve.registry.serving import BatchedServing
from mlserve.spec.request_id import check_request_id
from mlserve.routing import split as splits
from mlserve.routing.bandit import BanditRecord, bandit_view
from mlserve.routing.breaker import BreakerState
from mlserve.routing.rollout import Rollout, RolloutPlan, RolloutStatus
from mlserve.routing.rollout_stats import StepHealth, increments, stats_key
from mlserve.routing.shared import SharedExperiments, moments_from, versions_in
from mlserve.routing.shadow import ShadowJob, ShadowRunner, ShadowStats, Tensors, compare_outputs
from mlserve.routing.traffic import ModelTraffic
from mlserve.routing.stats import Moments
from mlserve.spec import BanditSpec, TrafficSpec, parse_split
from mlserve.state import MemoryStore, StateStore

log = logging.getLogger("mlserve.routing")

SHADOW_QUEUE = 64
_ROLLOUT_GAUGE = {RolloutStatus.RUNNING: 1, RolloutStatus.PROMOTED: 2, RolloutStatus.ROLLED_BACK: 3,
                  RolloutStatus.CANCELLED: 4}


@dataclasses.dataclass(slots=True)
class _ShownBreaker:
    """A breaker-state gauge child and the state it was last set to."""

    gauge: Any
    state: BreakerState | None = None


class TrafficManager:
    """Owns every model's ModelTraffic, the shadow runner and the rollout tasks."""

    def __init__(self, loader: HotSwapLoader, metrics: Metrics, rng: random.Random | None = None,
                 shadow_queue: int = SHADOW_QUEUE, store: StateStore | None = None) -> None:
        self._loader = loader
        self._shared = SharedExperiments(store or MemoryStore())
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._states: dict[str, ModelTraffic] = {}
        self._entries: dict[str, object] = {}
        self._shadow = ShadowRunner(shadow_queue, self._shadow_done)
        self._published: dict[str, set[int]] = {}
        self._overrides: dict[str, dict[str, Any]] = {}
        """Per model, the [traffic] keys set through the API (checked JSON, as the control document
        holds them): they hold over model.toml's until set to null."""
        self._bandits: dict[str, BanditRecord] = {}
        """Per model, the split its bandit last wrote (through the control door, from any replica)."""
        self._breaker_gauges: dict[tuple[str, int], _ShownBreaker] = {}
        """The breaker-state gauge's child per (model, version), bound once, and the state it shows."""
        loader.held_versions = self._rollout_versions

    def _rollout_versions(self, name: str) -> set[int]:
        """The versions a rollout's split in force routes to (weight above 0), which the loader keeps:
        stable and canary while it runs (or since it was cancelled), the stable one after a rollback.
        None after a promotion: the promoted version is the model's from then on, and a version that
        arrives later is served as the version policy says."""
        state = self._states.get(name)
        if state is None or state.source != "rollout" or (
                state.rollout is not None and state.rollout.status is RolloutStatus.PROMOTED):
            return set()
        return {version for version, weight in state.split if weight > 0}

    # -- state ---------------------------------------------------------------------------------

    def state(self, served: ServedModel) -> ModelTraffic:
        """This model's traffic state, refreshed when a repository reload replaced its entry."""
        found = self._states.get(served.name)
        if found is not None and self._entries.get(served.name) is served.entry:
            return found
        self._entries[served.name] = served.entry
        return self._refresh(served, found)

    def _refresh(self, served: ServedModel, found: ModelTraffic | None) -> ModelTraffic:
        override = self._overrides.get(served.name, {})
        spec = _with_override(served.entry.config.traffic, override)
        source = "api" if override.get("split") else "model.toml"
        if found is None:
            found = self._states[served.name] = ModelTraffic.from_spec(spec, source)
        elif found.spec != spec:
            if spec.split != found.spec.split and found.is_rolling_out and source == "api":
                found.rollout.cancel("split set by the API")
                self._publish_rollout(served.name, found)
            found.reload(spec, source)
        else:
            return found
        self._keep_bandit_split(served.name, found)
        self._publish_weights(served.name, found)
        return found

    def _keep_bandit_split(self, name: str, state: ModelTraffic) -> None:
        """A bandit owns the split across reloads; a bandit taken out of model.toml hands it back."""
        record = self._bandits.get(name)
        if state.spec.bandit is not None and record is not None and not state.is_rolling_out:
            state.set_split(record.split, "bandit")
        elif state.spec.bandit is None and state.source == "bandit":
            override = self._overrides.get(name, {})
            state.set_split(state.spec.split, "api" if override.get("split") else "model.toml")

    def _served(self, name: str) -> ServedModel:
        served = self._loader.models.get(name)
        if served is None:
            raise ModelNotFound.unknown(name)
        return served

    def sticky_parameter(self, served: ServedModel) -> str | None:
        """The request parameter this model routes by, if its sticky key is a parameter."""
        key = self.state(served).spec.sticky_key
        return key.name if key is not None and key.source == "param" else None

    def sticky_key(self, served: ServedModel, headers: Mapping[str, str], parameters: Mapping[str, Any]) -> str | None:
        key = self.state(served).spec.sticky_key
        return key.extract(headers, parameters) if key is not None else None

    # -- routing -------------------------------------------------------------------------------

    def route(self, served: ServedModel, default: ServedVersion, key: str | None) -> ServedVersion:
        """The version for an unversioned request: by split (or the default), unless its breaker is open."""
        state = self.state(served)
        version = splits.assign(state.split, key, state.spec.salt, self._rng) if state.split else default.version
        chosen = served.versions.get(version)
        if chosen is not None and chosen.is_ready and state.breaker(version).can_pass():
            return chosen
        return self._fallback(served, state, version, chosen if chosen is not None and chosen.is_ready else default)

    def _fallback(self, served: ServedModel, state: ModelTraffic, refused: int, last_resort: ServedVersion) -> ServedVersion:
        self._metrics.fallback_requests.labels(served.name, str(refused)).inc()
        if state.spec.fallback != "previous":
            other = self._loader.models.get(state.spec.fallback)
            ready = other.ready_versions() if other is not None else []
            if ready:
                return other.versions[ready[-1]]
        for candidate in self._candidates(served, state, refused):
            sv = served.versions.get(candidate)
            if sv is not None and sv.is_ready and state.breaker(candidate).can_pass():
                return sv
        return last_resort

    @staticmethod
    def _candidates(served: ServedModel, state: ModelTraffic, refused: int) -> list[int]:
        """The stable version, the one before it, then older versions, then newer ones."""
        ready = served.ready_versions()
        ordered = [state.stable, state.previous_stable]
        ordered += [v for v in reversed(ready) if v < refused] + [v for v in ready if v > refused]
        seen: list[int] = []
        for v in ordered:
            if v is not None and v != refused and v not in seen:
                seen.append(v)
        return seen

    # -- results -------------------------------------------------------------------------------

    def record(self, model: str, answered: ServedVersion, req_id: str, latency_s: float, ok: bool, routed: bool) -> None:
        """A request finished: feed the breaker, the experiment and any running rollout."""
        owner_model = self._loader.models.get(answered.model)
        if owner_model is not None:
            breaker = self.state(owner_model).breaker(answered.version)
            breaker.record(ok)
            self._show_breaker(answered.model, answered.version, breaker.state)
        state = self._states.get(model)
        if state is None or not routed or answered.model != model:
            return
        if state.split and state.experiment is not None:
            state.experiment.assign(req_id, answered.version)
            state.experiment.observe(answered.version, latency_s, ok)
            self._shared.note(model, req_id, answered.version, ok)
        rollout = state.rollout
        if state.is_rolling_out and answered.version in (rollout.plan.version, rollout.stable):
            self._shared.count(stats_key(model, rollout.id, rollout.step), increments(answered.version, latency_s, ok))

    def _show_breaker(self, model: str, version: int, state: BreakerState) -> None:
        """The breaker's state on its gauge, set when it differs from the one shown (a gauge's set
        takes a lock: once per change, not once per request)."""
        shown = self._breaker_gauges.get((model, version))
        if shown is None:  # the gauge keeps every child it made, so this table holds no more than it
            shown = self._breaker_gauges[(model, version)] = _ShownBreaker(
                self._metrics.breaker_state.labels(model, str(version)))
        if shown.state is not state:
            shown.gauge.set(state.value)
            shown.state = state

    def release(self, answered: ServedVersion) -> None:
        """A request ended on the client's error: nothing to judge, but a half-open probe slot is freed."""
        owner = self._states.get(answered.model)
        if owner is not None:
            owner.breaker(answered.version).release()

    # -- shadow --------------------------------------------------------------------------------

    def shadow(self, served: ServedModel, primary: int, inputs: Tensors, outputs: Tensors) -> None:
        """Copy a share of the traffic to the shadow version; never waits, never raises."""
        spec = self.state(served).spec.shadow
        if spec is None or spec.version == primary or self._rng.random() * 100 >= spec.percent:
            return
        target = served.versions.get(spec.version)
        serving = target.serving if target is not None and target.is_ready else None
        if not isinstance(serving, BatchedServing):
            return
        job = ShadowJob(served.name, spec.version, inputs, outputs, serving.runtime.infer)
        if not self._shadow.offer(job):
            self._shadow_stats(served.name, spec.version).num_dropped += 1
            self._metrics.shadow_requests.labels(served.name, str(spec.version), "dropped").inc()

    def _shadow_stats(self, model: str, version: int) -> ShadowStats:
        return self._states[model].shadow.setdefault(version, ShadowStats())

    def _shadow_done(self, job: ShadowJob, outputs: Tensors | None) -> None:
        if job.model not in self._states:
            return
        stats = self._shadow_stats(job.model, job.version)
        labels = (job.model, str(job.version))
        if outputs is None:
            stats.num_failed += 1
            self._metrics.shadow_requests.labels(*labels, "failed").inc()
            return
        compare_outputs(stats, job.primary, outputs)
        self._metrics.shadow_requests.labels(*labels, "compared").inc()
        if stats.agreement is not None:
            self._metrics.shadow_agreement.labels(*labels).set(stats.agreement)
        if stats.mean_abs_diff is not None:
            self._metrics.shadow_abs_diff.labels(*labels).set(stats.mean_abs_diff)

    # -- admin ---------------------------------------------------------------------------------

    def traffic_view(self, name: str) -> dict:
        """The traffic in force; `error` says why model.toml's latest [traffic] is not (the file
        failed to parse, so the last good one stays)."""
        error = self._loader.scan_errors.get(name)
        return {"model": name, **self.state(self._served(name)).to_dict(), "error": error}

    def check_override(self, name: str, body: Any) -> dict[str, Any]:
        """PUT /admin/models/{m}/traffic's body, checked: any of split, stable, shadow, fallback and
        breaker (null drops the API's value: model.toml's holds again). Returns the keys as the
        control document holds them; InvalidInput names what is wrong and nothing changes."""
        served = self._served(name)
        if not isinstance(body, dict) or not body or set(body) - set(OVERRIDE_KEYS):
            raise InvalidInput(f"the body must be an object with any of {', '.join(OVERRIDE_KEYS)} "
                               '(e.g. {"split": {"1": 90, "2": 10}})')
        spec_keys = {k: v for k, v in body.items() if k != "stable" and v is not None}
        try:
            parsed = TrafficSpec.parse(spec_keys)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if "split" in spec_keys and self.state(served).spec.bandit is not None:
            raise Conflict(f"model {name!r} has a bandit ([traffic] bandit in its model.toml): the bandit owns "
                           "the split; remove the bandit from model.toml to set the split by hand")
        named = [v for v, _ in parsed.split] if "split" in spec_keys else []
        named += [parsed.shadow.version] if "shadow" in spec_keys else []
        stable = body.get("stable")
        if stable is not None:
            if not str(stable).isdigit() or isinstance(stable, bool):
                raise InvalidInput(f"stable: {stable!r} is not a version number")
            named.append(int(stable))
        unknown = sorted({v for v in named if v not in served.versions})
        if unknown:
            raise InvalidInput(f"model {name!r} has no version(s) {unknown} loaded")
        return {key: _override_json(key, body[key]) for key in body}

    def override(self, name: str) -> dict[str, Any]:
        return dict(self._overrides.get(name, {}))

    def apply_override(self, name: str, override: dict[str, Any]) -> None:
        """Make `override` (a control document's traffic keys) the API's [traffic] keys in force here.
        Raises ValueError naming a key that does not parse (bad data in the store)."""
        _with_override(TrafficSpec(), override)  # checked before anything changes
        served = self._served(name)
        before = self._overrides.get(name, {})
        self._overrides[name] = {k: v for k, v in override.items() if v is not None}
        state = self._refresh(served, self._states.get(name))
        stable = self._overrides[name].get("stable")
        if stable is not None and stable != before.get("stable"):
            state.promote(int(stable))
        if override.get("split") and override.get("split") != before.get("split"):
            log.info("model %s: split set to %s by the API", name, override["split"])

    def set_split(self, name: str, body: Any) -> dict:
        """This process only (the control door, mlserve/dataplane/control.py, shares it): apply an
        API change; a split cancels a running rollout."""
        merged = {**self.override(name), **self.check_override(name, body)}
        self.apply_override(name, merged)
        return self.traffic_view(name)

    def experiment_view(self, name: str) -> dict:
        served = self._served(name)
        state = self.state(served)
        control = self._control(served, state)
        view = state.experiment.view(control, [v for v, _ in state.split]) if state.experiment else {}
        return {"model": name, **view, "shadow": state.to_dict()["shadow"], "bandit": bandit_view(
            state.spec.bandit, self._bandits.get(name), state.split, state.is_rolling_out)}

    # -- bandit (mlserve/routing/bandit.py computes, mlserve/dataplane/bandit.py drives) ---------

    def bandits(self) -> dict[str, BanditSpec]:
        """Every loaded model whose [traffic] has a bandit, with its settings."""
        found = {}
        for name, served in list(self._loader.models.items()):
            spec = self.state(served).spec.bandit
            if spec is not None:
                found[name] = spec
        return found

    async def bandit_inputs(self, name: str) -> tuple[list[int], dict[int, Moments], bool] | None:
        """(arms, every replica's outcome moments per arm, binary?) for the bandit's next update; None
        while it must not move the split: a rollout runs, fewer than two arms are ready, the store is away."""
        served = self._served(name)
        state = self.state(served)
        if state.spec.bandit is None or state.is_rolling_out:
            return None
        wanted = [v for v, _ in state.spec.split] or served.ready_versions()
        arms = [v for v in wanted if v in served.versions and served.versions[v].is_ready]
        snapshot = await self._shared.snapshot(name)
        if len(arms) < 2 or snapshot is None:
            return None
        sums = snapshot[0]
        return arms, {v: moments_from(sums, v) for v in versions_in(sums)}, state.spec.experiment.outcome == "binary"

    def bandit_record(self, name: str) -> dict | None:
        record = self._bandits.get(name)
        return record.to_json() if record is not None else None

    def apply_bandit(self, name: str, raw: Any) -> None:
        """Make a bandit's split (a control document's "bandit" entry) the split in force here, while
        this model's [traffic] has a bandit. Raises ValueError naming what does not parse."""
        record = BanditRecord.from_json(raw)
        served = self._served(name)
        self._bandits[name] = record
        state = self.state(served)
        if state.spec.bandit is not None and not state.is_rolling_out:
            state.set_split(record.split, "bandit")
            self._publish_weights(name, state)

    async def feedback(self, name: str, body: Any) -> dict:
        """Credit an outcome to the version that answered the request, whichever replica that was:
        each request's first outcome counts, cluster-wide."""
        served = self._served(name)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or "value" not in body:
            raise InvalidInput('the body must be {"id": "<request id>", "value": <number>}')
        req_id = check_request_id(body["id"])
        experiment = self.state(served).experiment
        value = experiment.check_value(body["value"])
        version = experiment.assigned(req_id)
        if version is None:
            version = await self._shared.lookup(name, req_id)
        if version is None:
            raise ModelNotFound(f"no routed request with id {req_id!r} (unknown, explicit-version, or too old)")
        is_first = await self._shared.claim(name, req_id)
        if is_first is False or (is_first is None and experiment.is_answered(req_id)):
            raise InvalidInput(f"request {req_id!r} already has an outcome")
        experiment.mark_answered(req_id)
        sums = await self._shared.credit(name, version, value)
        state = self.state(served)  # the same unless a reload replaced it while this waited
        control = self._control(served, state)
        shared = None if sums is None else {v: moments_from(sums, v) for v in versions_in(sums)}
        state.experiment.credit(version, value, control, shared)
        for (base, other), p_value in state.experiment.test_p_values().items():
            await self._shared.lower_p_value(name, base, other, p_value)
        return {"id": req_id, "model": name, "version": str(version)}

    async def refresh_experiment(self, name: str) -> None:
        """Take every replica's counts into this one's experiment view (kept when the store is away)."""
        state = self.state(self._served(name))
        snapshot = await self._shared.snapshot(name)
        if snapshot is None or state.experiment is None:
            return
        sums, counts, tests = snapshot
        p_values = {}
        for field_name, p_value in tests.items():
            kind, _, pair = field_name.partition(":")
            base, _, other = pair.partition(":")
            if kind == "p" and base.isdigit() and other.isdigit():
                p_values[(int(base), int(other))] = p_value
        state.experiment.take_shared(
            {v: moments_from(sums, v) for v in versions_in(sums)},
            {v: (int(counts.get(f"r:{v}", 0)), int(counts.get(f"e:{v}", 0))) for v in versions_in(counts)},
            p_values)

    @staticmethod
    def _control(served: ServedModel, state: ModelTraffic) -> int:
        if state.stable is not None:
            return state.stable
        ready = served.ready_versions()
        return ready[-1] if ready else 0

    # -- rollouts ------------------------------------------------------------------------------

    def new_rollout(self, name: str, body: Any) -> Rollout:
        """POST /admin/models/{m}/rollout's rollout, checked against what is loaded (nothing changes)."""
        served = self._served(name)
        plan = RolloutPlan.parse(body)
        state = self.state(served)
        if state.spec.bandit is not None:
            raise Conflict(f"model {name!r} has a bandit ([traffic] bandit in its model.toml): the bandit owns "
                           "the split; remove the bandit from model.toml to roll out by hand")
        if state.is_rolling_out:
            raise InvalidInput(f"model {name!r} is already rolling out version {state.rollout.plan.version}")
        canary = served.versions.get(plan.version)
        if canary is None or not canary.is_ready:
            raise InvalidInput(f"model {name!r} version {plan.version} is not loaded and ready")
        return Rollout(plan, self._stable_for(served, state, plan.version))

    def start_rollout(self, name: str, body: Any) -> dict:
        """This process only: ModelControl (mlserve/dataplane/control.py) shares a rollout and drives it."""
        self.put_rollout(name, self.new_rollout(name, body))
        return self.rollout_view(name)

    def _stable_for(self, served: ServedModel, state: ModelTraffic, canary: int) -> int:
        if state.stable is not None and state.stable != canary:
            return state.stable
        others = [v for v in served.ready_versions() if v != canary]
        if not others:
            raise InvalidInput(f"model {served.name!r} has no other ready version to compare version {canary} with")
        return others[-1]

    def rollout_view(self, name: str) -> dict:
        state = self.state(self._served(name))
        return {"model": name, "rollout": state.rollout.to_dict() if state.rollout else None}

    def running_rollout(self, name: str) -> Rollout | None:
        state = self._states.get(name)
        return state.rollout if state is not None and state.is_rolling_out else None

    def rolling_out(self) -> list[str]:
        return [name for name, state in self._states.items() if state.is_rolling_out]

    def cancel_rollout(self, name: str) -> dict:
        """This process only, like start_rollout."""
        state = self.state(self._served(name))
        if not state.is_rolling_out:
            raise InvalidInput(f"model {name!r} has no rollout running")
        state.rollout.cancel("cancelled by the API")
        self.put_rollout(name, state.rollout)
        return self.rollout_view(name)

    def put_rollout(self, name: str, rollout: Rollout, owns_split: bool = True, is_own_change: bool = True) -> None:
        """Make `rollout` (a new one, or a later state of the one in force) this model's here: its split
        (unless an API split came after it: `owns_split` False), a promotion, logs and metrics. A
        rollback is counted by the replica whose change it was (`is_own_change`), once cluster-wide."""
        state = self.state(self._served(name))
        before, state.rollout = state.rollout, rollout
        is_new = before is None or before.id != rollout.id
        if is_new and rollout.status is RolloutStatus.RUNNING:
            log.info("model %s: rollout of version %d over %d started (steps %s)", name, rollout.plan.version,
                     rollout.stable, list(rollout.plan.steps))
        was_running = is_new or before.status is RolloutStatus.RUNNING
        if was_running and rollout.status is RolloutStatus.PROMOTED:
            state.promote(rollout.plan.version)
            log.info("model %s: version %d promoted to stable (%s)", name, rollout.plan.version, rollout.reason)
        elif was_running and rollout.status is RolloutStatus.ROLLED_BACK:
            if is_own_change:
                self._metrics.rollout_rollbacks.labels(name, str(rollout.plan.version)).inc()
            log.warning("model %s: version %d rolled back: %s", name, rollout.plan.version, rollout.reason)
        if owns_split:
            state.set_split(tuple(sorted(rollout.weights().items())), "rollout")
            self._publish_weights(name, state)
        self._publish_rollout(name, state)

    async def judge_rollout(self, name: str) -> Rollout | None:
        """The running rollout's next state, judged on every replica's counts of its step; None while
        nothing changes, and while the counts cannot be read (the store is away: hold the step)."""
        rollout = self.running_rollout(name)
        if rollout is None or not await self._take_rollout_counts(name, rollout):
            return None
        candidate = Rollout.from_state(rollout.to_state())
        candidate.take_counts(rollout.canary_health, rollout.stable_health)
        return candidate if candidate.tick() else None

    async def refresh_rollout(self, name: str) -> None:
        """Take every replica's counts of the current step into this one's rollout view."""
        state = self.state(self._served(name))
        if state.rollout is not None and state.rollout.status is RolloutStatus.RUNNING:
            await self._take_rollout_counts(name, state.rollout)

    async def _take_rollout_counts(self, name: str, rollout: Rollout) -> bool:
        fields = await self._shared.counts(stats_key(name, rollout.id, rollout.step))
        if fields is None:
            return False
        rollout.take_counts(StepHealth.from_fields(fields, rollout.plan.version),
                            StepHealth.from_fields(fields, rollout.stable))
        return True

    # -- metrics -------------------------------------------------------------------------------

    def _publish_weights(self, name: str, state: ModelTraffic) -> None:
        total = sum(w for _, w in state.split) or 1.0
        weights = dict(state.split)
        published = self._published.setdefault(name, set())
        for version in published | set(weights):
            self._metrics.traffic_weight.labels(name, str(version)).set(weights.get(version, 0.0) / total)
        published.update(weights)

    def _publish_rollout(self, name: str, state: ModelTraffic) -> None:
        rollout = state.rollout
        if rollout is not None:
            labels = (name, str(rollout.plan.version))
            self._metrics.rollout_state.labels(*labels).set(_ROLLOUT_GAUGE[rollout.status])
            self._metrics.rollout_percent.labels(*labels).set(rollout.percent)

    async def close(self) -> None:
        await self._shared.close()
        await self._shadow.close()


OVERRIDE_KEYS = ("split", "stable", "shadow", "fallback", "breaker")


def _override_json(key: str, value: Any) -> Any:
    """One checked API key as the control document keeps it (plain JSON, numbers as numbers)."""
    if value is None:
        return None
    if key == "split":
        return {str(v): w for v, w in parse_split(value)}
    if key == "stable":
        return str(value)
    return value


def _with_override(spec: TrafficSpec, override: Mapping[str, Any]) -> TrafficSpec:
    """model.toml's [traffic] with the API's keys over it; ValueError names a key that does not parse."""
    keys = {k: v for k, v in override.items() if k in ("split", "shadow", "fallback", "breaker") and v is not None}
    unknown = set(override) - set(OVERRIDE_KEYS)
    if unknown:
        raise ValueError(f"unknown traffic key(s) {', '.join(sorted(unknown))}")
    if not keys:
        return spec
    parsed = TrafficSpec.parse(keys)
    return dataclasses.replace(spec, **{k: getattr(parsed, k) for k in keys})
