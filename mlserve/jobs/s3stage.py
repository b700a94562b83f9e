"""Where an s3:// batch job's files are while it runs: checked at submit, downloaded into a working
folder under `[jobs] state_dir` before a run (and rebuilt from the S3 mirror after a takeover),
uploaded at the end (mlserve/jobs/s3files.py holds the S3 calls and the mirror)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from mlserve.errors import InvalidInput
from mlserve.jobs.checkpoint import checkpoint_path
from mlserve.jobs.formats import format_of
from mlserve.jobs.record import JobRecord
from mlserve.jobs.rows import check_output_names
from mlserve.jobs.s3files import S3Files, StageMirror, is_s3, reset_folder, split_uri, stage_uri
from mlserve.spec import ModelInfo

log = logging.getLogger("mlserve.jobs")


class S3Jobs:
    """The S3 side of in-server jobs on one replica: its client and its working folders."""

    def __init__(self, files: S3Files, state_dir: Path) -> None:
        self._files = files
        self._state_dir = state_dir

    async def close(self) -> None:
        await self._files.close()

    async def preflight(self, record: JobRecord, info: ModelInfo, suffixes: tuple[str, ...]) -> None:
        """What BatchRun would refuse, for s3:// files: formats, the model, an input that is not there,
        an output or errors object that is (unless `overwrite`)."""
        format_of(Path(split_uri(record.input, "input")[1]), suffixes)
        format_of(Path(split_uri(record.output, "output")[1]), suffixes)
        if info.max_batch_size <= 0:
            raise InvalidInput(f"model {record.model!r} has max_batch_size 0 (no batch dimension): batch runs need one")
        check_output_names([s.name for s in info.outputs])
        if record.input in (record.output, record.errors) or record.output == record.errors:
            raise InvalidInput("the input, output and errors objects must differ")
        if await self._files.stat(record.input) is None:
            raise InvalidInput(f"input {record.input} does not exist")
        for what, uri in (("output", record.output), ("errors", record.errors)):
            if not record.overwrite and await self._files.stat(uri) is not None:
                raise InvalidInput(f"{what} {uri} exists; start over with overwrite")

    def working(self, record: JobRecord) -> tuple[str, str, str]:
        """The local working copies of an s3:// job's files, on the replica that runs it."""
        folder = self._state_dir / "s3" / record.job_id
        return (str(folder / ("input" + Path(record.input).suffix)), str(folder / ("output" + Path(record.output).suffix)),
                str(folder / "errors.jsonl"))

    async def stage_in(self, record: JobRecord) -> StageMirror:
        """Download the input, and rebuild the working files from the mirror when the job ran before."""
        local_in, local_out, local_errors = (Path(p) for p in self.working(record))
        await asyncio.to_thread(reset_folder, local_in.parent)
        await self._files.download(record.input, local_in)
        mirror = StageMirror(self._files, local_in.parent, stage_uri(record.output), checkpoint_path(local_out), local_in)
        if record.overwrite:
            await self._files.delete_prefix(stage_uri(record.output))
        elif await mirror.restore({"input": str(local_in.resolve()), "output": str(local_out.resolve()),
                                   "errors": str(local_errors.resolve())}):
            log.info("batch job %s: working files rebuilt from %s", record.job_id, stage_uri(record.output))
        return mirror

    async def stage_out(self, record: JobRecord) -> None:
        _, local_out, local_errors = (Path(p) for p in self.working(record))
        await self._files.upload(local_out, record.output)
        await self._files.upload(local_errors, record.errors)
        await self._files.delete_prefix(stage_uri(record.output))
        await asyncio.to_thread(shutil.rmtree, local_out.parent, True)


def s3_files(body: dict) -> tuple[str, str, str]:
    """An s3:// job's input, output and errors: all three s3://bucket/key (errors beside the output by default)."""
    for what in ("input", "output", "errors"):
        raw = body.get(what)
        if raw is not None and not is_s3(raw):
            raise InvalidInput(f"{what!r} must be s3://bucket/key too: a job's files are all on S3 or all under "
                               f"the batch folder, got {raw!r}")
        if raw is not None:
            split_uri(raw, what)
    return body["input"], body["output"], body.get("errors") or body["output"] + ".errors.jsonl"
