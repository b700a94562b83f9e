"""Process-wide server state the handlers read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ServerState:
    """Whether the server takes traffic: ready after the first repository pass, not ready while stopping."""

    is_started: bool = False
    is_stopping: bool = False
    is_saturated: bool = False
    """Set while the server holds its max_in_flight requests, when readiness should reflect that."""

    @property
    def is_ready(self) -> bool:
        return self.is_started and not self.is_stopping and not self.is_saturated
