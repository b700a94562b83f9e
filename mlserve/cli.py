"""The command line: `mlserve start` serves a repository, `mlserve status` shows a running one,
`mlserve examples` writes one."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from mlserve import __version__
from mlserve import process
from mlserve.config import LOG_FORMATS, LOG_INPUTS, LOG_LEVELS, Config, load_config
from mlserve.monitor.logs import setup_logging

log = logging.getLogger("mlserve")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlserve", description="Serve versioned ML models over HTTP.")
    parser.add_argument("--version", action="version", version=f"mlserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="serve every model in a repository")
    start.add_argument("--models", help="model repository folder (default ./models)")
    start.add_argument("--host", help="address to bind (default 127.0.0.1)")
    start.add_argument("--port", type=int, help="port to bind (default 8000)")
    start.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 turns gRPC off)")
    start.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    start.add_argument("--config", type=Path, help="settings file (default ./mlserve.toml when present)")
    start.add_argument("--s3-endpoint", help="endpoint URL for an s3:// repository (S3-compatible servers)")
    start.add_argument("--poll-interval", type=float, help="also reconcile with the repository every N seconds")
    start.add_argument("--lazy", action="store_true", default=None, help="load each model on its first request")
    start.add_argument("--max-loaded-models", type=int, help="evict the least recently used idle model past N")
    start.add_argument("--max-loaded-mb", type=float, help="evict idle models past N MiB of loaded artifacts")
    start.add_argument("--device", help="device of models whose model.toml names none: cpu (default), cuda, "
                       "cuda:N or auto")
    start.add_argument("--gpu-memory-fraction", type=float,
                       help="share of each GPU's memory the models may hold together (default 0.9)")
    start.add_argument("--allowed-hosts", metavar="NAMES", help="Host names answered besides loopback and the "
                       "bound address, comma-separated (.example.com = a domain, * = any)")
    start.add_argument("--cors-origins", metavar="ORIGINS", help="origins whose pages may call the server "
                       "(CORS), comma-separated, e.g. https://app.example")
    start.add_argument("--trusted-proxies", metavar="CIDRS", help="proxies whose X-Forwarded-For names the client")
    start.add_argument("--auth-keys", metavar="FILE", help="API keys file: every endpoint but health needs a key")
    start.add_argument("--trust-repository", action="store_true", default=None,
                       help="load TorchScript and torch.export artifacts, which can run code when read")
    start.add_argument("--trust-uploads", action="store_true", default=None,
                       help="also load such artifacts from uploaded versions: an admin key can then run code")
    start.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    start.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    start.add_argument("--state", metavar="URL", help="shared control state: memory (default) or "
                       "redis://[:password@]host:6379/0 (rediss:// for TLS) for replicas that act as one server")
    start.add_argument("--batch-dir", metavar="DIR", help="allow in-server batch jobs on files under DIR")
    _add_keys_parser(sub)
    start.add_argument("--log-format", choices=LOG_FORMATS, help="server log lines: plain (default) or json")
    start.add_argument("--prediction-log", metavar="DIR", help="write a sampled prediction log (JSON lines) here")
    start.add_argument("--log-sample-rate", type=float, help="share of requests in the prediction log (default 0.01)")
    start.add_argument("--log-inputs", choices=LOG_INPUTS, help="prediction log keeps input hashes (default) or values")
    from mlserve.optimize.cli import add_optimize_parser

    add_optimize_parser(sub)
    status = sub.add_parser("status", help="print a running server's overview (what the page at / shows)")
    status.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    status.add_argument("--key", help="API key, when the server has keys on")
    status.add_argument("--json", action="store_true", help="print the overview JSON as GET /status gives it")
    from mlserve.push import add_push_parser

    add_push_parser(sub)
    _add_batch_parser(sub)
    examples = sub.add_parser("examples", help="write the example model repository (offline, deterministic)")
    examples.add_argument("dir", type=Path)
    return parser


def _add_batch_parser(sub) -> None:
    batch = sub.add_parser("batch", help="run a model over a file (npz, jsonl, parquet), no server needed")
    batch.add_argument("--models", required=True, help="model repository folder or s3://bucket/prefix")
    batch.add_argument("--model", required=True)
    batch.add_argument("--version", type=int, help="default: the newest served version (or the one a run resumes)")
    batch.add_argument("--input", type=Path, required=True, help="data.npz, data.jsonl or data.parquet")
    batch.add_argument("--output", type=Path, required=True, help="out.npz, out.jsonl or out.parquet")
    batch.add_argument("--errors", type=Path, help="failed rows as JSON lines (default OUTPUT.errors.jsonl)")
    batch.add_argument("--chunk-rows", type=int, default=0, help="rows read and checkpointed at a time (~4096)")
    batch.add_argument("--overwrite", action="store_true", help="start over even if an output or checkpoint exists")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    batch.add_argument("--s3-endpoint", help="endpoint URL for an s3:// repository")
    batch.add_argument("--trust-repository", action="store_true", default=None,
                       help="load TorchScript and .pt2 (they can run code) without trusted = true in model.toml")
    batch.add_argument("--config", type=Path, help="settings file (default ./mlserve.toml when present)")
    batch.add_argument("--log-level", choices=LOG_LEVELS, help="default info")


def _batch(args: argparse.Namespace) -> int:
    from mlserve.errors import MlserveError
    from mlserve.jobs.offline import OfflineArgs, run_offline
    from mlserve.server.http.openai.protocol import parse_generation

    try:
        config = load_config(args.config, overrides={
            "server": {"log_level": args.log_level},
            "registry": {"models": args.models, "s3_endpoint": args.s3_endpoint,
                         "trust_repository": args.trust_repository},
        })
    except (ValueError, OSError) as exc:
        print(f"mlserve: bad settings: {exc}", file=sys.stderr)
        return 2
    if args.chunk_rows < 0:
        print("mlserve: --chunk-rows must be >= 0", file=sys.stderr)
        return 2
    setup_logging(config.server.log_level, config.monitor.log_format)
    process.apply(config.server.process)
    offline = OfflineArgs(args.models, args.model, args.version, args.input, args.output, args.errors,
                          args.chunk_rows, args.overwrite, not args.no_progress)
    try:
        failed = asyncio.run(run_offline(offline, config, parse_generation))
    except (MlserveError, ValueError, OSError) as exc:
        log.error("batch run failed: %s", exc)
        return 1
    return 3 if failed else 0


def _add_keys_parser(sub) -> None:
    keys = sub.add_parser("keys", help="manage the API keys file")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="add a key and print it once")
    create.add_argument("--file", type=Path, required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", default="infer", help="infer, admin or infer,admin")
    create.add_argument("--rps", type=float, default=0.0, help="requests per second (0 = unlimited)")
    create.add_argument("--concurrency", type=int, default=0, help="requests in flight (0 = unlimited)")
    create.add_argument("--priority", type=int, help="batcher priority class for this key's requests")
    create.add_argument("--quota", type=int, default=0,
                        help="requests per --quota-period across every replica sharing --state (0 = unlimited)")
    create.add_argument("--token-quota", type=int, default=0,
                        help="generation tokens (prompt and completion) per --quota-period across every replica "
                             "sharing --state (0 = unlimited)")
    create.add_argument("--quota-period", choices=("day", "month"), default="day", help="UTC day (default) or month")
    listing = actions.add_parser("list", help="show the keys (never their secrets)")
    listing.add_argument("--file", type=Path, required=True)
    listing.add_argument("--state", metavar="URL", help="shared state store to read quota use from "
                         "(default: [state] url of mlserve.toml or MLSERVE_STATE_URL; memory = not shown)")
    listing.add_argument("--config", type=Path, help="settings file (default ./mlserve.toml when present)")
    revoke = actions.add_parser("revoke", help="revoke a key by name or id")
    revoke.add_argument("--file", type=Path, required=True)
    revoke.add_argument("key", help="name or id")


LEFTOVER_WAIT_S = 2.0
"""How long the tasks still running after the stop get to end once cancelled."""


async def end_leftover_tasks(wait_s: float = LEFTOVER_WAIT_S) -> list[str]:
    """Cancel every other task still running; the names of those that did not end within `wait_s`.
    A task whose cancel a library turned into an error it then caught would otherwise hold the
    interpreter's exit for ever (asyncio's runner waits on every task it cancels at its close)."""
    me = asyncio.current_task()
    rest = [task for task in asyncio.all_tasks() if task is not me]
    for task in rest:
        task.cancel()
    if rest:
        await asyncio.wait(rest, timeout=wait_s)
    return [f"{task.get_name()} ({getattr(task.get_coro(), '__qualname__', '?')})" for task in rest if not task.done()]


async def serve(config: Config) -> tuple[int, list[str]]:
    """Run until SIGTERM or SIGINT; then stop accepting, finish in-flight requests, unload. Returns
    how many hung model workers are still running, and the tasks that did not end when cancelled."""
    from aiohttp import web

    from mlserve.server.app import KEYRING, MODELS, STATE, create_app

    app = create_app(config)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=config.server.shutdown_grace_s,
        max_line_size=config.limits.max_header_bytes, max_field_size=config.limits.max_header_bytes,
        keepalive_timeout=config.server.keepalive_timeout_s,
    )
    await runner.setup()
    site = _site(runner, app, config)
    await site.start()
    address = site._server.sockets[0].getsockname() if site._server and site._server.sockets else None
    scheme = "https" if config.auth.tls_cert else "http"
    log.info("mlserve %s listening on %s://%s:%s", __version__, scheme, config.server.host, address[1] if address else "?")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_sighup() -> None:
        """One signal, two reloads: the repository (the same reconcile as the API) and the keys file."""
        app[MODELS].trigger("signal")
        if app[KEYRING].is_enabled:
            app[KEYRING].reload()

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    # Readiness turns 503 first, so a load balancer steers away while the listener still answers.
    app[STATE].is_stopping = True
    log.info("stopping: not ready; closing the listener in %.1f s", config.limits.shutdown_delay_s)
    await asyncio.sleep(config.limits.shutdown_delay_s)
    log.info("stopping: no new connections, finishing in-flight requests")
    await runner.cleanup()
    stuck = await end_leftover_tasks()
    log.info("stopped")
    return app[MODELS].num_hung_workers(), stuck


def _site(runner, app, config: Config):
    """The fast lane in front of aiohttp on the port, or aiohttp alone (fast_lane off, or TLS)."""
    from aiohttp import web

    if not config.server.fast_lane or config.auth.tls_cert:
        return web.TCPSite(runner, config.server.host, config.server.port, ssl_context=_tls_context(config))
    from mlserve.server.app import BROWSER, METRICS, V2
    from mlserve.server.http.fastlane import LaneFront, LaneSite

    front = LaneFront(app[V2], app[BROWSER], runner.server, config.server, config.limits.max_header_bytes,
                      app[METRICS])
    return LaneSite(runner, front, config.server.host, config.server.port, config.server.shutdown_grace_s)


def _tls_context(config: Config):
    if not config.auth.tls_cert:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.auth.tls_cert, config.auth.tls_key)
    return context


def _start(args: argparse.Namespace) -> int:
    overrides = {
        "server": {"host": args.host, "port": args.port, "grpc_port": args.grpc_port, "log_level": args.log_level,
                   "allowed_hosts": args.allowed_hosts, "cors_origins": args.cors_origins,
                   "trusted_proxies": args.trusted_proxies},
        "registry": {
            "models": args.models, "s3_endpoint": args.s3_endpoint, "poll_interval_s": args.poll_interval,
            "lazy": args.lazy, "max_loaded_models": args.max_loaded_models, "max_loaded_mb": args.max_loaded_mb,
            "trust_repository": args.trust_repository, "trust_uploads": args.trust_uploads,
            "default_device": args.device,
            "gpu_memory_fraction": args.gpu_memory_fraction,
        },
        "auth": {"keys_file": args.auth_keys, "tls_cert": args.tls_cert, "tls_key": args.tls_key},
        "monitor": {
            "log_format": args.log_format, "prediction_log": args.prediction_log,
            "log_sample_rate": args.log_sample_rate, "log_inputs": args.log_inputs,
        },
        "jobs": {"allowed_dir": args.batch_dir},
        "state": {"url": args.state},
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except (ValueError, OSError) as exc:
        print(f"mlserve: bad settings: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.server.log_level, config.monitor.log_format)
    if "://" not in config.registry.models and not Path(config.registry.models).is_dir():
        log.error("model repository %s is not a folder", config.registry.models)
        return 2
    if config.auth.keys_file and not _keys_file_ok(Path(config.auth.keys_file)):
        return 2
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        hung, stuck = runner.run(serve(config))
        _exit_past_hung_models(hung, stuck)  # before the runner's close, which would wait on `stuck` for ever
    return 0


def _keys_file_ok(path: Path) -> bool:
    from mlserve.keys import read_keys

    if not path.is_file():
        log.error("keys file %s does not exist (create one with `mlserve keys create`)", path)
        return False
    try:
        read_keys(path)
    except ValueError as exc:
        log.error("%s", exc)
        return False
    return True


def _exit_past_hung_models(hung: int, stuck: list[str]) -> None:
    """A model thread stuck in native code would abort interpreter shutdown, and a task that ignores
    its cancel would hold it: leave without them."""
    if stuck:
        log.warning("exiting with %d task(s) that did not end when cancelled: %s", len(stuck), ", ".join(stuck))
    if hung or stuck:
        if hung:
            log.warning("exiting with %d hung model worker(s) still running", hung)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "start":
        return _start(args)
    if args.command == "batch":
        return _batch(args)
    if args.command == "keys":
        from mlserve.keys_cli import run_keys

        return run_keys(args)
    if args.command == "optimize":
        from mlserve.optimize.cli import run_optimize

        return run_optimize(args)
    if args.command == "status":
        from mlserve.status_cli import run_status

        return run_status(args.url, args.key, args.json)
    if args.command == "push":
        from mlserve.push import run_push

        return run_push(args)
    if args.command == "examples":
        from mlserve.examples import write_examples

        for line in write_examples(args.dir):
            print(line)
        return 0
    return 2
