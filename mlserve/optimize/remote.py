"""`mlserve optimize --rollout 5,25,100 --server URL`: hand the published version to a running
server through its own admin API (load, then a canary rollout), as an operator would by hand.

The serving version is pinned while the new one loads, so the new one takes no traffic before the
rollout's first step; the pin is lifted once the rollout's split is in force.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class RemoteError(Exception):
    """The server refused a step; the message carries its answer."""


def parse_steps(text: str) -> list[float]:
    try:
        steps = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--rollout takes percents like 5,25,100, got {text!r}") from None
    if not steps or steps != sorted(steps) or not all(0 < s <= 100 for s in steps):
        raise ValueError("--rollout steps must be non-decreasing percents in (0, 100]")
    return steps


class AdminClient:
    """The few admin calls a rollout needs, over plain HTTP."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 300.0) -> None:
        self._url, self._timeout = url.rstrip("/"), timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def call(self, path: str, body: Any = None, method: str = "POST") -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._url + path, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as err:
            raise RemoteError(f"{method} {path}: {err.code} {err.read().decode(errors='replace')}") from None
        except urllib.error.URLError as err:
            raise RemoteError(f"{method} {path}: {err.reason}") from None


def start_rollout(client: AdminClient, model: str, version: int, steps: list[float]) -> dict:
    """Load `version` on the server and start its canary rollout; returns the rollout's state."""
    serving = client.call(f"/admin/models/{model}", method="GET")["serving"]
    if serving is not None:
        client.call(f"/admin/models/{model}/pin", {"version": serving})
    try:
        client.call(f"/v2/repository/models/{model}/load")
        return client.call(f"/admin/models/{model}/rollout", {"version": version, "steps": steps})
    finally:
        if serving is not None:
            client.call(f"/admin/models/{model}/unpin")
