"""The command line: `mlserve start` serves a repository, `mlserve examples` writes one."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from mlserve import __version__
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
    start.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    start.add_argument("--config", type=Path, help="settings file (default ./mlserve.toml when present)")
    start.add_argument("--log-format", choices=LOG_FORMATS, help="server log lines: plain (default) or json")
    start.add_argument("--prediction-log", metavar="DIR", help="write a sampled prediction log (JSON lines) here")
    start.add_argument("--log-sample-rate", type=float, help="share of requests in the prediction log (default 0.01)")
    start.add_argument("--log-inputs", choices=LOG_INPUTS, help="prediction log keeps input hashes (default) or values")
    examples = sub.add_parser("examples", help="write the example model repository (offline, deterministic)")
    examples.add_argument("dir", type=Path)
    return parser


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT; then stop accepting, finish in-flight requests, unload."""
    from aiohttp import web

    from mlserve.server.app import STATE, create_app

    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=config.server.shutdown_grace_s)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    address = site._server.sockets[0].getsockname() if site._server and site._server.sockets else None
    log.info("mlserve %s listening on http://%s:%s", __version__, config.server.host, address[1] if address else "?")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: no new connections, finishing in-flight requests")
    app[STATE].is_stopping = True
    await runner.cleanup()
    log.info("stopped")


def _start(args: argparse.Namespace) -> int:
    overrides = {
        "server": {"host": args.host, "port": args.port, "log_level": args.log_level},
        "registry": {"models": args.models},
        "monitor": {
            "log_format": args.log_format, "prediction_log": args.prediction_log,
            "log_sample_rate": args.log_sample_rate, "log_inputs": args.log_inputs,
        },
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
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "start":
        return _start(args)
    if args.command == "examples":
        from mlserve.examples import write_examples

        for line in write_examples(args.dir):
            print(line)
        return 0
    return 2
