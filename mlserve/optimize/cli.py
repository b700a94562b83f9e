"""`mlserve optimize`: flags to an OptimizeRequest, a progress line per pass, the results table."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from mlserve.errors import MlserveError
from mlserve.optimize import PASSES, mlflow_repo, parse_passes
from mlserve.optimize.base import Options
from mlserve.optimize.evaluate import Budget
from mlserve.optimize.gate import OBJECTIVES, GateSettings
from mlserve.optimize.pipeline import Cancelled, OptimizeRequest, Report, run
from mlserve.optimize.remote import AdminClient, RemoteError, parse_steps, start_rollout
from mlserve.optimize.table import render


def add_optimize_parser(sub) -> None:
    p = sub.add_parser("optimize", help="make faster versions of a model, gate them on accuracy, publish the best")
    p.add_argument("--models", help="model repository: a folder, s3://bucket/prefix or mlflow://host:port "
                                    "(the winner is registered as a new model version)")
    p.add_argument("--s3-endpoint", help="endpoint URL for an s3:// repository (S3-compatible servers)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", type=int, help="source version (default the newest)")
    p.add_argument("--file", type=Path, help="optimize this artifact instead of a repository version (no publish)")
    p.add_argument("--data", type=Path, help="validation .npz: the model's inputs, and 'labels' if any "
                                             "(default the version's reference.npz or warmup.npz)")
    p.add_argument("--passes", help=f"comma-separated, from {','.join(PASSES)}")
    p.add_argument("--objective", choices=OBJECTIVES, default="throughput")
    p.add_argument("--max-top1-drop", type=float, default=0.01, help="share of rows (default 0.01)")
    p.add_argument("--max-abs-diff", type=float, help="largest output difference allowed (default unchecked)")
    p.add_argument("--max-metric-drop", type=float, default=0.01, help="accuracy against labels (default 0.01)")
    p.add_argument("--min-cosine", type=float, help="lowest mean cosine similarity to the source's outputs "
                                                    "(embeddings; default unchecked)")
    p.add_argument("--min-gain", type=float, default=1.05,
                   help="publish only a winner this many times better than the source (default 1.05)")
    p.add_argument("--sparsity", type=float, default=0.3, help="share of channels pruning removes (default 0.3)")
    p.add_argument("--calibration-rows", type=int, default=256, help="rows static INT8 calibrates on")
    p.add_argument("--distill-width", type=float, default=0.5,
                   help="share of each hidden layer the distilled student keeps (default 0.5)")
    p.add_argument("--distill-steps", type=int, default=2000, help="student training steps (default 2000)")
    p.add_argument("--distill-time-s", type=float, default=60.0, help="cap on the student's training time")
    p.add_argument("--distill-seed", type=int, default=0)
    p.add_argument("--timing-s", type=float, default=1.0, help="seconds each latency figure is timed for")
    p.add_argument("--no-publish", action="store_true", help="measure and gate only")
    p.add_argument("--trust-repository", action="store_true",
                   help="load TorchScript and .pt2 sources (they can run code) without trusted = true in model.toml")
    p.add_argument("--rollout", help="percents like 5,25,100: roll the published version out as a canary "
                                     "on the server at --server; with mlflow:// an alias (challenger) to point "
                                     "at the registered version, which the serving mlserve rolls out")
    p.add_argument("--server", help="URL of the mlserve serving --models (for --rollout)")
    p.add_argument("--api-key", help="admin key for --server when it checks keys")


def request_from_args(args: argparse.Namespace) -> OptimizeRequest:
    """Raises ValueError naming the bad flag."""
    if args.models is None and args.file is None:
        raise ValueError("give --models (a repository) or --file (an artifact)")
    if args.file is not None and args.version is not None:
        raise ValueError("--version picks a repository version; --file names the artifact itself: give one")
    if not 0.0 < args.sparsity < 1.0:
        raise ValueError("--sparsity must lie in (0, 1)")
    if args.rollout is not None and mlflow_repo.is_mlflow(args.models):
        if not mlflow_repo.ALIAS.fullmatch(args.rollout) or args.server or args.no_publish or args.file is not None:
            raise ValueError("with an mlflow:// repository --rollout names the alias to point at the registered "
                             "version (challenger: the serving mlserve rolls it out as the champion's [challenger] "
                             "table says), needs publishing, and takes no --server")
    elif args.rollout is not None:
        parse_steps(args.rollout)
        if not args.server or args.no_publish or args.file is not None:
            raise ValueError("--rollout needs --server, a repository version as the source, and publishing")
    if args.calibration_rows < 1 or args.timing_s <= 0:
        raise ValueError("--calibration-rows and --timing-s must be positive")
    if not 0.0 < args.distill_width < 1.0 or args.distill_steps < 1 or args.distill_time_s <= 0 \
            or args.distill_seed < 0:
        raise ValueError("--distill-width must lie in (0, 1); --distill-steps and --distill-time-s must be "
                         "positive and --distill-seed >= 0")
    return OptimizeRequest(
        model=args.model, models=Path(args.models) if args.models else None, version=args.version,
        file=args.file, data=args.data,
        passes=parse_passes(args.passes),
        options=Options(sparsity=args.sparsity, calibration_rows=args.calibration_rows,
                        distill_width=args.distill_width, distill_steps=args.distill_steps,
                        distill_time_s=args.distill_time_s, distill_seed=args.distill_seed),
        gate=GateSettings(args.max_top1_drop, args.max_abs_diff, args.max_metric_drop, args.objective,
                          args.min_gain, args.min_cosine),
        budget=Budget(latency_s=args.timing_s), publish=not args.no_publish,
        trust_repository=args.trust_repository,
    )


class ProgressPrinter:
    """One line per pass: a bar that fills when the pass is measured, and how long it took."""

    def __init__(self, passes: tuple[str, ...], out=sys.stderr) -> None:
        self._total, self._done, self._out = len(passes) + 1, 0, out
        self._started = time.monotonic()

    def __call__(self, event: dict) -> None:
        if event["event"] == "pass":
            self._started = time.monotonic()
            print(f"{self._bar()} {event['name']}: {event['state']}...", file=self._out, flush=True)
        elif event["event"] == "row":
            self._done += 1
            row = event["row"]
            print(f"{self._bar()} {row['name']}: {row['status']} ({time.monotonic() - self._started:.1f} s)",
                  file=self._out, flush=True)

    def _bar(self, width: int = 20) -> str:
        filled = width * self._done // self._total
        return f"[{'#' * filled}{'.' * (width - filled)}] {self._done}/{self._total}"


def run_optimize(args: argparse.Namespace) -> int:
    try:
        request = request_from_args(args)
    except ValueError as exc:
        print(f"mlserve optimize: {exc}", file=sys.stderr)
        return 2
    try:
        if args.models and args.models.startswith("s3://"):
            report = _run_on_s3(args, request)
        elif mlflow_repo.is_mlflow(args.models):
            report = _run_on_mlflow(args, request)
            print(render(report))
            return 0 if report.winner else 1
        else:
            report = run(request, ProgressPrinter(request.passes))
    except (MlserveError, Cancelled) as exc:
        print(f"mlserve optimize: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    if report.published_version is not None and args.rollout:
        return _roll_out(args, report.published_version)
    return 0 if report.winner else 1


def _run_on_s3(args: argparse.Namespace, request: OptimizeRequest) -> Report:
    """Mirror the model locally, run there, upload the published version."""
    from mlserve.optimize import s3_repo

    with tempfile.TemporaryDirectory(prefix="mlserve-optimize-s3-") as tmp:
        root = s3_repo.mirror(args.models, args.s3_endpoint, args.model, args.version, Path(tmp))
        report = run(replace(request, models=root), ProgressPrinter(request.passes))
        if report.published_version is not None:
            folder = root / args.model / str(report.published_version)
            s3_repo.upload(args.models, args.s3_endpoint, args.model, folder, Path(tmp))
    return report


def _run_on_mlflow(args: argparse.Namespace, request: OptimizeRequest) -> Report:
    """Mirror the registered model locally, run there, register the winner as a new model version."""
    with tempfile.TemporaryDirectory(prefix="mlserve-optimize-mlflow-") as tmp:
        root, source_version = mlflow_repo.mirror(args.models, args.model, args.version, Path(tmp))
        report = run(replace(request, models=root, version=source_version), ProgressPrinter(request.passes))
        if report.published_version is not None:
            folder = root / args.model / str(report.published_version)
            registered = mlflow_repo.register_published(args.models, args.model, folder, source_version,
                                                        args.rollout, Path(tmp))
            print(f"registered {args.model} version {registered} in {args.models} (from version {source_version})"
                  + (f"; @{args.rollout} -> {registered}" if args.rollout else ""), file=sys.stderr)
            report.published_version = registered
    return report


def _roll_out(args: argparse.Namespace, version: int) -> int:
    try:
        state = start_rollout(AdminClient(args.server, args.api_key), args.model, version,
                              parse_steps(args.rollout))
    except RemoteError as exc:
        print(f"mlserve optimize: version {version} is published, but its rollout failed: {exc}", file=sys.stderr)
        return 3
    rollout = state.get("rollout") or {}
    print(f"rollout of version {version} started at {rollout.get('percent')}% (steps {rollout.get('steps')})")
    return 0
