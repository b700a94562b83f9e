"""N mlserve replicas on loopback behind one nginx: the Kubernetes setup in miniature, on one machine.

    python deploy/local/replicas.py --replicas 3 --port 8080 -- --models ./examples/models
    python deploy/local/replicas.py --replicas 3 --port 8080 -- --models s3://bucket/models \\
        --s3-endpoint http://127.0.0.1:9000 --poll-interval 5

Everything after `--` goes to each `mlserve start`. Each replica gets its own port and S3 cache folder
under --workdir. `--state redis` also starts a redis-server (Debian: apt-get install redis-server) on a
free port, its append-only file under --workdir, and gives every replica `--state redis://...`: the
replicas then share admin changes, experiments and their counts (docs/deploy.md, "Replicas and shared state"). SIGHUP to this script restarts the replicas one at a time (a rolling restart: SIGTERM,
wait for the exit, start again, wait for readiness); nginx sends requests around the one that is down.
Ctrl-C or SIGTERM stops nginx and every replica. Needs nginx (Debian: apt-get install nginx-light).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

TEMPLATE = Path(__file__).with_name("nginx.conf.template")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@dataclass(slots=True)
class Replica:
    """One `mlserve start` process on a fixed loopback port; it keeps the port across restarts."""

    index: int
    port: int
    args: list[str]
    workdir: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cache = self.workdir / f"cache-{self.index}"
        # nginx on this machine is the proxy: its X-Forwarded-For names the client (the failed-key throttle).
        env = {**os.environ, "MLSERVE_REGISTRY_CACHE_DIR": str(cache), "MLSERVE_SERVER_TRUSTED_PROXIES": "127.0.0.1",
               **self.env}
        command = [sys.executable, "-m", "mlserve", "start", *self.args,
                   "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.workdir / f"replica-{self.index}.log", "ab") as log:
            # Own session: Ctrl-C reaches this script, which stops replicas in order, not every process at once.
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not is_ready(self.url):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.index} exited with {self.proc.returncode}: see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {self.index} not ready after {timeout} s: see {self.log_path}")
            time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (mlserve drains: readiness 503, listener closed, in-flight requests finish)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    @property
    def log_path(self) -> Path:
        return self.workdir / f"replica-{self.index}.log"


@dataclass(slots=True)
class RedisProcess:
    """redis-server on a loopback port with an append-only file (fsync always), so a restart keeps its data."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.port = self.port or free_port()
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        command = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                   "--appendfsync", "always", "--dir", str(self.workdir)]
        with open(self.workdir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: see {self.workdir / 'redis.log'}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass(slots=True)
class Replicas:
    """The replicas and the nginx in front of them; `url` is nginx's address."""

    mlserve_args: list[str]
    num_replicas: int = 3
    port: int = 0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlserve-replicas-")))
    env: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    nginx: subprocess.Popen | None = None
    state: str = "memory"
    """memory (each replica its own) or redis (a redis-server started here, shared by every replica)."""
    redis: RedisProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Replicas:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = list(self.mlserve_args)
        if self.state == "redis":
            self.redis = RedisProcess(self.workdir)
            self.redis.start()
            args += ["--state", self.redis.url]
        self.replicas = [
            Replica(i, free_port(), list(args), self.workdir, dict(self.env))
            for i in range(self.num_replicas)
        ]
        for replica in self.replicas:
            replica.start()
        for replica in self.replicas:
            replica.wait_ready(timeout)
        self._start_nginx(timeout)
        return self

    def nginx_conf(self) -> str:
        servers = "\n".join(f"        server 127.0.0.1:{r.port} max_fails=1 fail_timeout=2s;" for r in self.replicas)
        return Template(TEMPLATE.read_text()).substitute(
            prefix=self.workdir, servers=servers, listen=f"127.0.0.1:{self.port}")

    def _start_nginx(self, timeout: float) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.nginx_conf())
        check = subprocess.run([nginx, "-t", "-p", str(self.workdir), "-c", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        log = open(self.workdir / "nginx.out", "ab")
        self.nginx = subprocess.Popen(
            [nginx, "-p", str(self.workdir), "-c", str(conf)], stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not is_ready(self.url):
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not come up: {(self.workdir / 'error.log').read_text(errors='replace')}")
            time.sleep(0.1)

    def reload_nginx(self) -> None:
        """Re-read the configuration: new workers take over, old ones finish their requests."""
        if self.nginx is not None:
            self.nginx.send_signal(signal.SIGHUP)

    def rolling_restart(self, timeout: float = 120.0) -> list[int | None]:
        """Restart one replica at a time; returns each old process's exit code."""
        codes = []
        for replica in self.replicas:
            codes.append(replica.stop())
            replica.start()
            replica.wait_ready(timeout)
        return codes

    def stop(self) -> list[int | None]:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.nginx.wait(30)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        codes = [replica.stop() for replica in self.replicas]
        if self.redis is not None:
            self.redis.kill()
        return codes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, mlserve_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--port", type=int, default=8080, help="nginx listens on 127.0.0.1:PORT")
    parser.add_argument("--workdir", type=Path, help="logs, nginx.conf and S3 caches (default: a new temp folder)")
    parser.add_argument("--state", choices=("memory", "redis"), default="memory",
                        help="redis: start a redis-server and share control state through it (default memory)")
    args = parser.parse_args(own)
    replicas = Replicas(mlserve_args, args.replicas, args.port, state=args.state,
                        **({"workdir": args.workdir} if args.workdir else {}))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda *_: print("rolling restart:", replicas.rolling_restart(), flush=True))
    try:
        replicas.start()
        print(f"{args.replicas} replicas behind {replicas.url} (logs in {replicas.workdir})", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopped:", replicas.stop(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
