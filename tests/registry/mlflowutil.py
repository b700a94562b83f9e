"""A real MLflow tracking server for the tests (SQLite backend, local artifact root, the artifact
proxy on), run from its own venv (`make mlflow-server` builds .venv-mlflow), and MLflow's own client
run from that venv as a subprocess. mlserve's venv needs no mlflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.server_process import ROOT, free_port

MLFLOW_VENV = Path(os.environ.get("MLSERVE_MLFLOW_VENV", ROOT / ".venv-mlflow"))
CLIENT = Path(__file__).with_name("mlflow_client.py")


INSTALL_WAIT_S = 1800.0
"""`make test` installs the venv beside the suite: how long its tests wait for that install at most."""


def require_mlflow_venv() -> None:
    """Skip when the MLflow venv is missing, except under CI (CI=true), where that is a failure.
    While `make test` is still installing it (MLSERVE_MLFLOW_INSTALLING), wait for the install's
    stamp, or its failure marker, first."""
    if os.environ.get("MLSERVE_MLFLOW_INSTALLING"):
        _wait_for_install()
    if any(MLFLOW_VENV.glob(".installed-*")) and (MLFLOW_VENV / "bin" / "mlflow").is_file():
        return
    message = f"no MLflow venv at {MLFLOW_VENV}: run `make mlflow-server` (installs mlflow 3.17.2 there)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: the MLflow store's tests must run)")
    pytest.skip(message)


def _wait_for_install() -> None:
    failed, log = MLFLOW_VENV.with_name(MLFLOW_VENV.name + ".failed"), MLFLOW_VENV.with_name(MLFLOW_VENV.name + ".log")
    deadline = time.monotonic() + INSTALL_WAIT_S
    while not any(MLFLOW_VENV.glob(".installed-*")):
        if failed.exists():
            pytest.fail(f"installing the MLflow venv failed:\n{log.read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the MLflow venv was not installed within {INSTALL_WAIT_S:.0f} s")
        time.sleep(1.0)


class MlflowServer:
    """`mlflow server` on a free port; `kill()` and `start()` again keep its port, database and artifacts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> MlflowServer:
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        command = [str(MLFLOW_VENV / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                   "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"mlflow server not ready after {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the server and its workers (the process group it was started in)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_models(self, models: list[dict]) -> list[int]:
        """Log and register models with MLflow's own client (tests/registry/mlflow_client.py, run in
        the MLflow venv, once for all of them): each {name, flavor, folder, alias, signature}."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
        done = subprocess.run([str(MLFLOW_VENV / "bin" / "python"), str(CLIENT), self.url], input=json.dumps(models),
                              capture_output=True, text=True, env=env, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"mlflow client failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def register_missing(self, name: str) -> int:
        """A new model version of `name` pointing at a folder with no artifacts (inside version 1's
        run, which MLflow requires of an mlflow-artifacts: source), through the REST API."""
        with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/model-versions/get?name={name}&version=1",
                                    timeout=30) as resp:
            first = json.loads(resp.read())["model_version"]
        body = json.dumps({"name": name, "source": f"{first['source']}/gone", "run_id": first["run_id"]}).encode()
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/model-versions/create", data=body,
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(json.loads(resp.read())["model_version"]["version"])

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        body = json.dumps({"name": name, "version": str(version), "key": key, "value": value}).encode()
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/model-versions/set-tag", data=body,
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Move an alias through the REST API, as any MLflow client or the UI does."""
        body = json.dumps({"name": name, "alias": alias, "version": str(version)}).encode()
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/registered-models/alias", data=body,
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
