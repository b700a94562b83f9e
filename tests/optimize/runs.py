"""Waiting for a model's newest automatic optimization run to finish, through the admin route."""

from __future__ import annotations

import time

from tests.server.http import call


def wait_finished_run(url: str, model: str = "auto", timeout: float = 240.0) -> dict:
    """The newest run of `model` (GET /admin/models/{m}/optimize) once it is no longer queued or running."""
    deadline = time.monotonic() + timeout
    body = {}
    while time.monotonic() < deadline:
        answer = call(f"{url}/admin/models/{model}/optimize")
        body = answer.body
        if answer.status == 404:  # not listed until a reload finds its first version
            time.sleep(0.1)
            continue
        assert answer.status == 200, body
        if body["runs"] and body["runs"][0]["state"] not in ("queued", "running"):
            return body["runs"][0]
        time.sleep(0.1)
    raise TimeoutError(f"no finished automatic run of {model} after {timeout} s: {body}")
