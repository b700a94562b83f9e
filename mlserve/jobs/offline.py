"""`mlserve batch`: one model over one file, no server; the model's engine runs on one worker thread
at the model's max batch size."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlserve.config import Config, RegistryConfig
from mlserve.errors import InvalidInput, ModelNotFound
from mlserve.jobs.checkpoint import checkpoint_path, load_checkpoint
from mlserve.jobs.progress import ProgressBar
from mlserve.jobs.runner import BatchesFn, BatchRun, InferFn, JobPlan, RunTimes, Tensors
from mlserve.registry import repository
from mlserve.registry.opening import Alone, BatchedRuntime, Trust, VersionFiles, open_version, version_backend_name
from mlserve.registry.store import Store
from mlserve.spec import ModelConfig

if TYPE_CHECKING:
    from mlserve.jobs.generate import Parse

log = logging.getLogger("mlserve.batch")


@dataclass(frozen=True, slots=True)
class OfflineArgs:
    """The command line of `mlserve batch`."""

    models: str
    model: str
    version: int | None
    input: Path
    output: Path
    errors: Path | None = None
    chunk_rows: int = 0
    overwrite: bool = False
    progress: bool = True


def _open_store(registry: RegistryConfig) -> Store:
    uri = registry.models
    if uri.startswith("s3://"):
        from mlserve.registry.s3 import S3Store

        cache = Path(registry.cache_dir).expanduser() if registry.cache_dir else Path.home() / ".cache" / "mlserve"
        return S3Store(uri, cache, registry.s3_endpoint or None, registry.s3_region or None)
    if uri.startswith(("mlflow://", "mlflows://")):
        from mlserve.registry.mlflow import MlflowStore

        cache = Path(registry.cache_dir).expanduser() if registry.cache_dir else Path.home() / ".cache" / "mlserve"
        return MlflowStore(uri, cache, registry)
    from mlserve.registry.local import LocalStore

    return LocalStore(Path(uri))


def _pick_version(args: OfflineArgs, versions: tuple[int, ...], served: list[int]) -> int:
    """The asked version; else the one an unfinished run of this output used; else the newest served."""
    if args.version is not None:
        if args.version not in versions:
            raise ModelNotFound(f"model {args.model!r} has no version {args.version} (found {list(versions)})")
        return args.version
    stored = None if args.overwrite else load_checkpoint(checkpoint_path(args.output))
    if stored is not None and stored.model == args.model and stored.version in versions:
        return stored.version
    return max(served or versions)


@dataclass(frozen=True, slots=True)
class _Located:
    """The version a run uses: its folder and which backend reads it."""

    config: ModelConfig
    version: int
    path: Path
    backend: str
    trust: Trust
    max_bytes: int


async def _locate(store: Store, args: OfflineArgs, registry: RegistryConfig) -> _Located:
    await store.refresh(args.model)  # a remote store lists what it holds first
    entry = await repository.read_entry(store, args.model)
    version = _pick_version(args, entry.versions, entry.served_versions)
    path = await store.fetch(args.model, version)
    name = await asyncio.to_thread(version_backend_name, f"{args.model}/{version}", entry.config, path,
                                   registry.max_artifact_bytes)
    trust = Trust(registry.trust_repository or entry.config.trusted, registry.trust_uploads)
    return _Located(entry.config, version, path, name, trust, registry.max_artifact_bytes)


async def run_offline(args: OfflineArgs, config: Config, parse: Parse | None = None,
                      times: RunTimes | None = None) -> int:
    """Returns the number of failed rows (all of them in the errors file). `parse` decodes OpenAI
    request bodies for generation models (the protocol layer's decoder); `times` collects where a
    tensor model's run spent its time (the benchmark's per-batch profile)."""
    store = _open_store(config.registry)
    try:
        found = await _locate(store, args, config.registry)
    except BaseException:
        await store.close()
        raise
    if found.backend == "llm" and parse is not None:
        return await _run_generation(args, store, config, found.version, parse)
    await store.close()
    if found.backend == "llm":
        raise InvalidInput(f"model {args.model!r} generates text: batch files for it need the OpenAI decoder")
    # the server's way to open a version: backend choice, trust, placement (as if alone), warm-up
    files = VersionFiles(f"{args.model}/{found.version}", found.config, found.path, found.trust, found.max_bytes)
    runtime = await open_version(files, Alone(found.config.device or config.registry.default_device))
    try:
        assert isinstance(runtime, BatchedRuntime), "llm versions were sent to the generation path above"
        return await _run_tensors(args, runtime, found.version, times)
    finally:
        runtime.close()


@dataclass(slots=True)
class EngineCalls:
    """A tensor version's engine on one worker thread, as a batch run calls it (see `engine_calls`)."""

    infer: InferFn
    infer_batches: BatchesFn
    executor: ThreadPoolExecutor


def engine_calls(runtime: BatchedRuntime, times: RunTimes) -> EngineCalls:
    """A chunk's batches run back to back on the engine's thread in one call: the engine never waits
    for the event loop to take an answer and hand it the next batch, and the loop wakes once a chunk
    (a round trip per batch cost up to a third of the engine's time on a busy 2-core host). Call
    from the running loop; shut the executor down after the run."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlserve-batch")
    loop = asyncio.get_running_loop()

    def run_batches(batches: list[Tensors]) -> list[Tensors | Exception]:
        answers: list[Tensors | Exception] = []
        for inputs in batches:
            started = time.perf_counter()
            try:
                answers.append(runtime.infer(inputs))
            except Exception as exc:  # the run splits this batch to find its bad rows
                answers.append(exc)
            times.engine_s += time.perf_counter() - started
        return answers

    async def infer(inputs, num_rows):
        return await loop.run_in_executor(executor, runtime.infer, inputs)

    async def infer_batches(batches):
        return await loop.run_in_executor(executor, run_batches, batches)

    return EngineCalls(infer, infer_batches, executor)


async def _run_tensors(args: OfflineArgs, runtime: BatchedRuntime, version: int, times: RunTimes | None) -> int:
    times = times or RunTimes()
    calls = engine_calls(runtime, times)
    plan = JobPlan(args.model, version, runtime.info, args.input, args.output, args.errors, args.chunk_rows)
    try:
        return await _run(BatchRun(plan, calls.infer, times=times, infer_batches=calls.infer_batches), args)
    finally:
        calls.executor.shutdown(wait=True)


async def _run_generation(args: OfflineArgs, store: Store, config: Config, version: int, parse: Parse) -> int:
    """OpenAI batch files through the same loader, engine and generation entry point the server uses."""
    from mlserve.jobs.generate import BatchGenerator, job_submit
    from mlserve.jobs.openai_batch import OPENAI_FORMATS, batch_info
    from mlserve.monitor.metrics import Metrics
    from mlserve.registry.loader import HotSwapLoader
    from mlserve.registry.serving import GenerativeServing
    from mlserve.routing.generation.run import token_limits
    from mlserve.routing.service import InferenceService

    metrics = Metrics()
    loader = HotSwapLoader(store, config.registry, metrics)
    try:
        await loader.control.load(args.model, "batch")
        served = await loader.control.pin(args.model, version, "batch")
        serving = served.versions[version].serving
        assert isinstance(serving, GenerativeServing), "an llm version is served on its engine"
        service = InferenceService(loader, metrics)
        plan = JobPlan(args.model, version, batch_info(serving.engine), args.input, args.output, args.errors,
                       args.chunk_rows)
        generate = BatchGenerator(args.model, parse, job_submit(service, token_limits(config.limits)))
        return await _run(BatchRun(plan, generate, OPENAI_FORMATS), args)
    finally:
        await loader.close()


async def _run(run: BatchRun, args: OfflineArgs) -> int:
    try:
        checkpoint = await asyncio.to_thread(run.prepare, args.overwrite)
        if checkpoint.is_done:
            log.info("%s is already complete (%d rows, %d failed)", args.output, checkpoint.rows_ok,
                     checkpoint.rows_failed)
            return checkpoint.rows_failed
        if checkpoint.rows_done:
            log.info("resuming %s at row %d", args.output, checkpoint.rows_done)
        checkpoint = await _with_bar(run, args.progress)
    finally:
        run.close()
    log.info("%s: %d rows written, %d failed (see %s)", args.output, checkpoint.rows_ok, checkpoint.rows_failed,
             run.plan.errors_path)
    log.info("per batch of %d rows: %s", run.plan.batch_rows,
             ", ".join(f"{name} {us:.0f} us" for name, us in run.times.per_batch_us().items()))
    return checkpoint.rows_failed


async def _with_bar(run: BatchRun, show: bool):
    if not show:
        return await run.run()
    bar = ProgressBar(run.progress)
    task = asyncio.ensure_future(run.run())
    try:
        while not task.done():
            bar.draw()
            await asyncio.wait([task], timeout=0.1)
        return task.result()
    finally:
        bar.close()
