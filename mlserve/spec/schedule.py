"""What one request asks of a queue, decoded once by the protocol layer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    """A priority level, a queue timeout and a deadline (all optional), and how its front delivers requests."""

    priority: int | None = None
    """1 = highest; None = the model's default level."""
    timeout_us: int | None = None
    """Longest wait in the queue; may shorten the model's `timeout_us`, never lengthen it."""
    deadline: float | None = None
    """Monotonic time by which the request must be answered (its `timeout`, or the server's default
    deadline, counted from its arrival), whether it is still queued or its batch is running."""
    quiet_turns: int = 1
    """Turns of the event loop in a row with no request arriving after which a batch that could run
    closes early (always bounded by the model's `max_queue_delay_us`). 1 suits a front that reads
    requests already on their sockets in the same turn (HTTP); a front whose requests reach the loop
    one per turn of their own (gRPC, through its completion queue) asks for more."""
