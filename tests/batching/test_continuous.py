"""The generation Scheduler on its own: token budget, chunked prefill, max_num_seqs, preemption by
recompute (most recent first), and every block back in the pool after thousands of requests."""

from __future__ import annotations

import random

from mlserve.batching.continuous import Scheduler, SchedulerLimits
from mlserve.engine.llm.sequence import SeqStatus, Sequence
from mlserve.spec import Sampled, SamplingParams

EOS = 2


def _limits(**overrides) -> SchedulerLimits:
    base = dict(num_blocks=64, block_size=4, max_num_seqs=8, max_num_batched_tokens=32, max_model_len=256,
                eos_token_id=EOS)
    return SchedulerLimits(**{**base, **overrides})


def _seq(req_id: str, num_prompt: int, max_tokens: int, first: int = 10) -> Sequence:
    return Sequence(req_id, list(range(first, first + num_prompt)), SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def _step(scheduler: Scheduler):
    """One step with a stand-in model: the next token is a function of the sequence's length."""
    plan = scheduler.schedule()
    sampled = [Sampled(3 + (c.start + len(c.token_ids)) % 50) for c in plan.chunks if c.needs_logits]
    return plan, scheduler.update(plan, sampled)


def test_a_long_prompt_is_chunked_and_does_not_stall_decoding():
    scheduler = Scheduler(_limits(max_num_batched_tokens=32))
    scheduler.add(_seq("short", 3, max_tokens=50))
    _step(scheduler)
    scheduler.add(_seq("long", 100, max_tokens=5))
    chunks = []
    for _ in range(5):
        plan, _ = _step(scheduler)
        assert plan.num_batched_tokens <= 32
        by_id = {c.req_id: c for c in plan.chunks}
        assert len(by_id["short"].token_ids) == 1  # the decode runs every step
        chunks.append(len(by_id["long"].token_ids) if "long" in by_id else 0)
    assert chunks[:4] == [31, 31, 31, 7]
    assert [c.needs_logits for c in plan.chunks] == [True, True]


def test_running_batch_is_capped_at_max_num_seqs_and_newcomers_join_next_step():
    scheduler = Scheduler(_limits(max_num_seqs=3, max_num_batched_tokens=64))
    for i in range(5):
        scheduler.add(_seq(f"r{i}", 4, max_tokens=2))
    plan, _ = _step(scheduler)
    assert [c.req_id for c in plan.chunks] == ["r0", "r1", "r2"]
    plan, outputs = _step(scheduler)  # r0..r2 finish with their second token and leave at once
    assert {o.seq.req_id for o in outputs if o.seq.is_finished} == {"r0", "r1", "r2"}
    plan, _ = _step(scheduler)
    assert [c.req_id for c in plan.chunks] == ["r3", "r4"]


def test_the_most_recent_sequence_is_preempted_and_recomputed():
    scheduler = Scheduler(_limits(num_blocks=6, max_num_batched_tokens=64))
    for i in range(3):
        scheduler.add(_seq(f"r{i}", 8, max_tokens=12, first=10 + 100 * i))  # 2 blocks each, no shared prefix
    _step(scheduler)
    preempted = []
    while scheduler.has_work:
        plan, _ = _step(scheduler)
        preempted += plan.preempted
    assert preempted and preempted[0] == "r2"
    assert scheduler.num_preemptions >= 1
    assert scheduler.block_manager.num_used_blocks == 0


def _drive_random_workload(seed: int, num_requests: int) -> Scheduler:
    rng = random.Random(seed)
    scheduler = Scheduler(_limits(num_blocks=40, max_num_seqs=16, max_num_batched_tokens=48))
    prefixes = [list(range(100 * p, 100 * p + 12)) for p in range(4)]
    expected: dict[str, int] = {}
    finished: dict[str, Sequence] = {}
    added = 0
    while added < num_requests or scheduler.has_work:
        for _ in range(rng.randint(0, 3)):
            if added < num_requests:
                prompt = rng.choice(prefixes)[: rng.randint(0, 12)] + [rng.randint(3, 90) for _ in range(rng.randint(1, 20))]
                seq = Sequence(f"q{added}", prompt, SamplingParams(max_tokens=rng.randint(1, 24), ignore_eos=True))
                expected[seq.req_id] = seq.params.max_tokens
                scheduler.add(seq)
                added += 1
        if scheduler.running and rng.random() < 0.05:
            victim = rng.choice(scheduler.running + list(scheduler.waiting))
            finished[victim.req_id] = scheduler.finish(victim.req_id, SeqStatus.FINISHED_ABORTED)
        plan, outputs = _step(scheduler)
        assert plan.num_batched_tokens <= 48 and len(scheduler.running) <= 16
        finished.update({o.seq.req_id: o.seq for o in outputs if o.seq.is_finished})
    assert len(finished) == num_requests
    for req_id, seq in finished.items():
        if seq.status is SeqStatus.FINISHED_LENGTH:
            assert seq.num_output_tokens == expected[req_id]
    return scheduler


def test_every_block_returns_to_the_pool_after_thousands_of_requests():
    scheduler = _drive_random_workload(seed=7, num_requests=3000)
    manager = scheduler.block_manager
    assert scheduler.num_preemptions > 0, "the workload was meant to force preemption"
    assert manager.num_prefix_hits > 0, "the workload was meant to share prefixes"
    assert manager.num_used_blocks == 0
    assert manager.num_free_blocks == manager.num_blocks


def test_eos_and_max_model_len_end_a_sequence():
    scheduler = Scheduler(_limits(max_model_len=12))
    seq = Sequence("a", [5] * 10, SamplingParams(max_tokens=100))
    scheduler.add(seq)
    plan = scheduler.schedule()
    outputs = scheduler.update(plan, [Sampled(7)])
    assert not outputs[0].seq.is_finished
    plan = scheduler.schedule()
    outputs = scheduler.update(plan, [Sampled(7)])
    assert seq.status is SeqStatus.FINISHED_LENGTH and seq.num_tokens == 12
    eos = Sequence("b", [5] * 3, SamplingParams(max_tokens=100))
    scheduler.add(eos)
    scheduler.update(scheduler.schedule(), [Sampled(EOS)])
    assert eos.status is SeqStatus.FINISHED_STOPPED and eos.finish_reason == "stop"
    assert scheduler.block_manager.num_used_blocks == 0


def test_waiting_sequences_are_admitted_by_key_priority_then_arrival():
    scheduler = Scheduler(_limits(max_num_seqs=1))
    arrivals = [("plain-a", None), ("low", 3), ("plain-b", None), ("high", 1), ("low-2", 3), ("high-2", 1)]
    for req_id, priority in arrivals:
        seq = _seq(req_id, 4, 1)
        seq.priority = priority
        scheduler.add(seq)
    assert [s.req_id for s in scheduler.waiting] == ["high", "high-2", "low", "low-2", "plain-a", "plain-b"]


def _tenant_seq(req_id: str, tenant: str, priority: int | None = None) -> Sequence:
    seq = _seq(req_id, 4, 1)
    seq.tenant, seq.priority = tenant, priority
    return seq


def _admitted(scheduler: Scheduler, steps: int) -> list[str]:
    order = []
    for _ in range(steps):
        plan, _ = _step(scheduler)
        order += [c.req_id for c in plan.chunks if c.start == 0]
    return order


def test_one_tenants_backlog_does_not_hold_back_another_tenants_sequence():
    """Key A queues 100 sequences; key B's one, added after them, is admitted next, not 100th."""
    scheduler = Scheduler(_limits(max_num_seqs=1))
    for i in range(100):
        scheduler.add(_tenant_seq(f"a{i}", "A"))
    assert _admitted(scheduler, 2) == ["a0", "a1"]
    scheduler.add(_tenant_seq("b0", "B"))
    assert _admitted(scheduler, 3) == ["a2", "b0", "a3"]


def test_tenants_take_turns_and_each_keeps_its_own_order():
    scheduler = Scheduler(_limits(max_num_seqs=1))
    for i in range(3):
        scheduler.add(_tenant_seq(f"a{i}", "A"))
    for i in range(3):
        scheduler.add(_tenant_seq(f"b{i}", "B"))
    scheduler.add(_tenant_seq("c0", "C"))
    assert _admitted(scheduler, 7) == ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]


def test_priority_still_comes_before_the_fair_share():
    scheduler = Scheduler(_limits(max_num_seqs=1))
    for i in range(3):
        scheduler.add(_tenant_seq(f"a{i}", "A", priority=1))
    scheduler.add(_tenant_seq("b0", "B"))
    assert _admitted(scheduler, 4) == ["a0", "a1", "a2", "b0"]


def test_thousands_of_one_request_tenants_pass_through_and_the_pool_drains():
    """Keyless requests are each their own tenant; the fair share forgets a tenant once it is served."""
    scheduler = Scheduler(_limits(max_num_seqs=4, num_blocks=256))
    for i in range(3000):
        scheduler.add(_tenant_seq(f"r{i}", f"req-{i}"))
        _step(scheduler)
    while scheduler.has_work:
        _step(scheduler)
    scheduler.add(_tenant_seq("last", "req-last"))
    assert _admitted(scheduler, 1) == ["last"]
    assert len(scheduler.waiting) == 0 and scheduler.block_manager.num_free_blocks == 256
