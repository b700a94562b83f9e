"""Background rows on a thread of their own (the second way in batching/share.py): on a real
DynamicBatcher with a plain function as the model, and the rule's choice at load on real ONNX
versions (registry/opening.py)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mlserve.batching.dynamic import BACKGROUND_DEPTH, DynamicBatcher
from mlserve.batching.guard import GuardedInfer
from mlserve.batching.share import BACKGROUND_NICE
from mlserve.config import RegistryConfig
from mlserve.errors import ModelLoadError
from mlserve.examples import MLP_TOML, write_mlp_onnx
from mlserve.jobs.sharing import WAITING_FOR_LIVE, BackgroundRows
from mlserve.monitor.metrics import Metrics
from mlserve.monitor.stats import InferenceStatistics
from mlserve.registry.opening import Alone, Trust, VersionFiles, open_version
from mlserve.registry.served import ServedVersion, VersionState
from mlserve.registry.serving import serve_batched
from mlserve.spec import BatchingSpec, read_model_config

from tests.jobs.test_sharing import rows, until

MAX_ROWS = 8


class TwoThreadModel:
    """Returns its input. Records each batch's first-column values apart for the background thread
    (recognised by its guard's label) and the live worker, and the background thread's nice value;
    `bg_gate` holds every background batch until set."""

    def __init__(self) -> None:
        self.live: list[list[int]] = []
        self.background: list[list[int]] = []
        self.background_nice: list[int] = []
        self.bg_entered = threading.Event()
        self.bg_gate = threading.Event()
        self.live_entered = threading.Event()
        self.live_gate = threading.Event()
        self.live_gate.set()

    def __call__(self, inputs):
        values = inputs["x"][:, 0].astype(int).tolist()
        if threading.current_thread().name.endswith("/background"):
            self.background_nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            self.bg_entered.set()
            self.bg_gate.wait(10)
            self.background.append(values)
        else:
            self.live_entered.set()
            self.live_gate.wait(10)
            self.live.append(values)
        return {"y": inputs["x"]}


def setup() -> tuple[TwoThreadModel, DynamicBatcher, BackgroundRows]:
    model = TwoThreadModel()
    background = GuardedInfer(model, "t/background", nice=BACKGROUND_NICE, one_thread=True)
    batcher = DynamicBatcher(model, BatchingSpec(max_batch_size=MAX_ROWS, max_queue_delay_us=0), "t",
                             background=background)
    batcher.start()
    return model, batcher, BackgroundRows(ServedVersion("m", 1, VersionState.READY), batcher)


def job_rows(first: int, count: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(first, first + count, dtype=np.float32)[:, None]}


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_live_requests_are_answered_while_job_batches_run_on_the_low_priority_thread():
    """A job's batch holds the background thread; live requests still run at once on their own worker,
    with no job rows in their batches, and the job's rows run in full batches on that thread only."""
    async def main():
        model, batcher, job = setup()
        job_task = asyncio.create_task(job.batches([job_rows(100, 8), job_rows(200, 8), job_rows(300, 5)]))
        await asyncio.to_thread(model.bg_entered.wait, 10)
        answers = [await asyncio.wait_for(batcher.submit(rows(value), 1), 5) for value in (1, 2, 3)]
        assert not job_task.done() and not model.background  # the job's first batch is still held
        model.bg_gate.set()
        outputs = await job_task
        await batcher.stop()
        return model, answers, outputs

    model, answers, outputs = asyncio.run(main())
    assert [a["y"][0, 0] for a in answers] == [1, 2, 3]
    assert model.live == [[1], [2], [3]]
    assert model.background == [list(range(100, 108)), list(range(200, 208)), list(range(300, 305))]
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert set(model.background_nice) == {min(19, base + BACKGROUND_NICE)}
    assert [o["y"][:, 0].tolist() for o in outputs] == [list(range(100, 108)), list(range(200, 208)),
                                                        list(range(300, 305))]


def test_a_job_whose_thread_gets_no_cpu_moves_by_the_floor_in_live_batches_and_says_it_waits():
    """The background thread is held (as a thread the kernel never schedules); once live rows bring
    the job's share below the floor (0.1), live batches (of 4-row requests, so one fits beside the
    held rows) carry ceil(0.1 x 8) = 1 job row each, and the job reports that it waits for live load."""
    async def main():
        model, batcher, job = setup()
        held_batches = [job_rows(100 + 10 * i, MAX_ROWS) for i in range(BACKGROUND_DEPTH)]
        job_task = asyncio.create_task(job.batches([*held_batches, job_rows(900, 3)]))
        await asyncio.to_thread(model.bg_entered.wait, 10)
        await until(lambda: batcher.num_background == 3)  # the thread took all it may hold
        live_rows = 0
        while batcher.num_background and live_rows < 5000:
            await asyncio.gather(*(batcher.submit(rows(1, 4), 4) for _ in range(4)))
            live_rows += 16
        status = job.status()
        model.bg_gate.set()
        outputs = await job_task
        await batcher.stop()
        return model, status, outputs

    model, status, outputs = asyncio.run(main())
    carried = [b for b in model.live if 900 <= max(b)]
    assert [[v for v in b if v >= 900] for b in carried] == [[900], [901], [902]]
    assert all(1 in b for b in carried)  # each rode in a live batch
    assert status == WAITING_FOR_LIVE
    assert outputs[-1]["y"][:, 0].tolist() == [900, 901, 902]


@pytest.mark.parametrize("leaves", ["into a batch", "cancelled"])
def test_the_thread_takes_no_job_batch_while_live_rows_for_a_full_batch_wait(leaves):
    """A live batch is held while two live requests of 4 rows (a full batch of 8) queue behind it: the
    background thread takes none of the job's rows until that backlog leaves the queue, into a batch
    (the held one returns) or by its clients going away (no batch is formed: the thread must look
    again by itself); then every row runs once (the first maybe beside a live request, by the floor)."""
    async def main():
        model, batcher, job = setup()
        model.bg_gate.set()
        model.live_gate.clear()
        first = asyncio.create_task(batcher.submit(rows(1), 1))
        await asyncio.to_thread(model.live_entered.wait, 10)
        backlog = [asyncio.create_task(batcher.submit(rows(2, 4), 4)) for _ in range(2)]
        await until(lambda: batcher.num_queued == 2)
        job_task = asyncio.create_task(job.batches([job_rows(100, 8), job_rows(200, 8)]))
        await until(lambda: batcher.num_background == 16)
        for _ in range(50):  # turns of the loop in which the thread could have taken a batch
            await asyncio.sleep(0)
        waiting_while_backlogged = batcher.num_background
        if leaves == "cancelled":
            for task in backlog:
                task.cancel()
            outputs = await asyncio.wait_for(job_task, 5)  # the live batch is still held meanwhile
            assert not first.done()
            model.live_gate.set()
            await first
        else:
            model.live_gate.set()
            await asyncio.gather(first, *backlog)
            outputs = await job_task
        await batcher.stop()
        return model, waiting_while_backlogged, outputs

    model, waiting_while_backlogged, outputs = asyncio.run(main())
    assert waiting_while_backlogged == 16
    ran = [v for b in model.live + model.background for v in b if v >= 100]  # floor rows ride in live batches
    assert sorted(ran) == [*range(100, 108), *range(200, 208)]
    assert [o["y"][:, 0].tolist() for o in outputs] == [list(range(100, 108)), list(range(200, 208))]


def test_one_thread_runs_batches_in_order_on_one_worker_and_a_hang_counts_once():
    seen: list[tuple[int, int]] = []
    release = threading.Event()

    def model(inputs):
        value = int(inputs["x"][0, 0])
        if value < 0:
            release.wait(10)
        seen.append((value, threading.get_native_id()))
        return {"y": inputs["x"]}

    async def main():
        guard = GuardedInfer(model, "one/background", one_thread=True)
        outs = await asyncio.gather(*(guard.run({"x": np.full((1, 1), v, np.float32)}) for v in (1, 2, 3)))
        hung = GuardedInfer(model, "hung/background", hang_timeout_s=0.2, one_thread=True)
        results = await asyncio.gather(*(hung.run({"x": np.full((1, 1), v, np.float32)}) for v in (-1, 4, 5)),
                                       return_exceptions=True)
        after = await hung.run({"x": np.full((1, 1), 6, np.float32)})  # a fresh worker takes it
        release.set()
        return outs, results, hung.num_hung, after

    outs, results, num_hung, after = asyncio.run(main())
    assert [o["y"][0, 0] for o in outs] == [1, 2, 3]
    assert [v for v, _ in seen[:3]] == [1, 2, 3] and len({t for _, t in seen[:3]}) == 1
    assert [type(r).__name__ for r in results] == ["ModelHung"] * 3  # 4 and 5 waited behind the hung batch
    assert num_hung == 1 and after["y"][0, 0] == 6


def _open(root: Path, toml: str):
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", seed=1)
    (root / "mlp" / "model.toml").write_text(toml)
    config = read_model_config(root / "mlp" / "model.toml")
    files = VersionFiles("mlp/1", config, root / "mlp" / "1", Trust(), RegistryConfig().max_artifact_bytes)
    return config, asyncio.run(open_version(files, Alone("cpu")))


@pytest.mark.parametrize("key, thread", [("", False), ("background_thread = true\n", True),
                                         ("background_thread = false\n", False)])
def test_an_onnx_cpu_version_gets_the_thread_only_when_asked(tmp_path, key, thread):
    config, runtime = _open(tmp_path, MLP_TOML + key)

    async def serve():
        serving = serve_batched(runtime, config, "mlp", 1, "f", Metrics(), InferenceStatistics(), None)
        try:
            return serving.batcher._bg is not None
        finally:
            await serving.batcher.stop()

    try:
        assert asyncio.run(serve()) is thread
    finally:
        runtime.close()


def test_background_thread_true_is_refused_at_load_where_the_engine_cannot_run_two_batches(tmp_path):
    with pytest.raises(ModelLoadError, match="background_thread = true.*intra_op_threads = 1"):
        _open(tmp_path, MLP_TOML + "intra_op_threads = 2\nbackground_thread = true\n")
    config, runtime = _open(tmp_path, MLP_TOML + "intra_op_threads = 2\n")  # without the key it loads
    runtime.close()
    assert runtime.runs_concurrently is False
