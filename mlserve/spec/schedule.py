"""What one request asks of a queue, decoded once by the protocol layer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    """A priority level, a queue timeout and a deadline (all optional)."""

    priority: int | None = None
    """1 = highest; None = the model's default level."""
    timeout_us: int | None = None
    """Longest wait in the queue; may shorten the model's `timeout_us`, never lengthen it."""
    deadline: float | None = None
    """Monotonic time by which the request must be answered (its `timeout`, or the server's default
    deadline, counted from its arrival), whether it is still queued or its batch is running."""
