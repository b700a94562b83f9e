"""One optimization job: open the source, run each pass, measure every candidate with the same
harness, gate them, and publish the best one that passes.

Progress goes to a callback as plain dicts (the CLI draws bars from them, the server job writes
them to a file its parent reads), and a cancel check runs between passes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from mlserve.optimize import create_pass
from mlserve.optimize.base import Artifact, Options, PassFailed, PassUnavailable, Source
from mlserve.optimize.evaluate import Budget, Figures, measure
from mlserve.optimize.gate import GateSettings, gain, rejection
from mlserve.optimize.publish import publish
from mlserve.optimize.source import open_source
from mlserve.registry.opening import Trust
from mlserve.registry.placement import device_alone

log = logging.getLogger("mlserve.optimize")

Progress = Callable[[dict], None]


class Cancelled(Exception):
    """The job was asked to stop; nothing was published."""


@dataclass(frozen=True, slots=True)
class OptimizeRequest:
    """Everything one job needs; the CLI flags and the admin route's body both become this."""

    model: str
    models: Path | None = None
    version: int | None = None
    file: Path | None = None
    data: Path | None = None
    passes: tuple[str, ...] = ()
    options: Options = field(default_factory=Options)
    gate: GateSettings = field(default_factory=GateSettings)
    budget: Budget = field(default_factory=Budget)
    publish: bool = True
    trust_repository: bool = False
    """Load TorchScript and .pt2 sources (they can run code) even where model.toml does not say trusted."""
    trust_uploads: bool = False
    """Load such a source that arrived by upload too (the server's [registry] trust_uploads)."""


@dataclass(slots=True)
class Row:
    """One line of the results table: the source or a candidate."""

    name: str
    status: str
    """source, passed, rejected, failed or unavailable."""
    passes: tuple[str, ...] = ()
    backend: str = ""
    figures: Figures | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "passes": list(self.passes), "backend": self.backend,
                "figures": self.figures.to_dict() if self.figures else None, "reason": self.reason}


@dataclass(slots=True)
class Report:
    """The job's outcome: every row, the winner and the version it became (None when none)."""

    rows: list[Row] = field(default_factory=list)
    winner: str | None = None
    published_version: int | None = None
    source_version: int | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"rows": [r.to_dict() for r in self.rows], "winner": self.winner, "reason": self.reason,
                "published_version": self.published_version, "source_version": self.source_version}


def _never_cancelled() -> bool:
    return False


def run(request: OptimizeRequest, progress: Progress = lambda event: None,
        is_cancelled: Callable[[], bool] = _never_cancelled, work_root: Path | None = None) -> Report:
    """Run the whole job in this process; the scratch folder is removed whatever happens."""
    work = Path(tempfile.mkdtemp(prefix="mlserve-optimize-", dir=work_root))
    try:
        return _run(request, work, progress, is_cancelled)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(request: OptimizeRequest, work: Path, progress: Progress, is_cancelled: Callable[[], bool]) -> Report:
    source = open_source(request.models, request.model, request.version, request.file, request.data, work,
                         request.trust_repository, request.trust_uploads)
    options = replace(request.options,
                      device=device_alone(source.config.device or request.options.device, source.backend))
    report = Report(source_version=source.version)
    progress({"event": "pass", "name": "source", "state": "measuring"})
    source_figures, reference = measure(source.folder, source.backend, source, None, request.budget,
                                        _artifact_bytes(source.folder), source.trust)
    report.rows.append(Row("source", "source", (), source.backend, source_figures))
    progress({"event": "row", "row": report.rows[-1].to_dict()})
    artifacts: dict[str, Artifact] = {}
    for name in _with_export(request.passes, source.backend):
        if is_cancelled():
            raise Cancelled("cancelled")
        progress({"event": "pass", "name": name, "state": "running"})
        row, artifact = _candidate(name, source, request, options, reference, source_figures)
        report.rows.append(row)
        if artifact is not None:
            artifacts[name] = artifact
        progress({"event": "row", "row": row.to_dict()})
    _choose(report, request.gate, source_figures)
    if is_cancelled():
        raise Cancelled("cancelled")
    if report.winner and request.publish and request.models is not None and request.file is None:
        record = _record(request, source, report, artifacts[report.winner])
        progress({"event": "publishing", "name": report.winner})
        report.published_version = publish(request.models / request.model, source.folder,
                                           artifacts[report.winner].folder, record)
        progress({"event": "published", "version": report.published_version})
    return report


def _with_export(passes: tuple[str, ...], backend: str) -> tuple[str, ...]:
    """ONNX-level passes on a torch source need the export first; it becomes a candidate too."""
    needs = any(p not in ("export", "aoti") for p in passes) and backend != "onnx"
    return ("export", *passes) if needs and "export" not in passes else passes


def _candidate(name: str, source: Source, request: OptimizeRequest, options: Options, reference,
               source_figures: Figures):
    out = source.work / name
    out.mkdir()
    try:
        artifact = create_pass(name).run(source, options, out)
    except PassUnavailable as exc:
        return Row(name, "unavailable", reason=str(exc)), None
    except Exception as exc:  # PassFailed, or anything a pass's library raises: the job goes on
        log.warning("pass %s failed: %s", name, exc, exc_info=not isinstance(exc, PassFailed))
        return Row(name, "failed", reason=f"{type(exc).__name__}: {exc}"), None
    try:
        figures, _ = measure(artifact.folder, artifact.backend, source, reference, request.budget,
                             artifact.num_bytes, Trust(model=True))  # made by this job, not read from outside
    except Exception as exc:
        log.warning("candidate %s could not be measured: %s", name, exc, exc_info=True)
        return Row(name, "failed", artifact.passes, artifact.backend, reason=f"measuring: {exc}"), None
    why = rejection(figures, source_figures, request.gate)
    status = "rejected" if why else "passed"
    return Row(name, status, artifact.passes, artifact.backend, figures, why or ""), artifact


def _choose(report: Report, gate: GateSettings, source_figures: Figures) -> None:
    passed = [r for r in report.rows if r.status == "passed"]
    if not passed:
        report.reason = "no candidate passed the accuracy gate"
        return
    best = max(passed, key=lambda r: gain(r.figures, source_figures, gate.objective))
    best_gain = gain(best.figures, source_figures, gate.objective)
    if best_gain < gate.min_gain:
        report.reason = (f"the best passing candidate ({best.name}) gains {best_gain:.2f}x on {gate.objective}, "
                         f"under --min-gain {gate.min_gain}")
        return
    report.winner = best.name


def _artifact_bytes(folder: Path) -> int:
    from mlserve.optimize.publish import is_artifact

    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and is_artifact(p))


def _record(request: OptimizeRequest, source: Source, report: Report, artifact: Artifact) -> dict:
    return {
        "backend": artifact.backend,
        "source_version": source.version,
        "source_backend": source.backend,
        "passes": list(artifact.passes),
        "winner": report.winner,
        "objective": request.gate.objective,
        "gate": {"max_top1_drop": request.gate.max_top1_drop, "max_abs_diff": request.gate.max_abs_diff,
                 "max_metric_drop": request.gate.max_metric_drop, "min_gain": request.gate.min_gain,
                 "min_cosine": request.gate.min_cosine},
        "validation_rows": source.num_rows,
        "candidates": [r.to_dict() for r in report.rows],
        "notes": artifact.notes,
    }
