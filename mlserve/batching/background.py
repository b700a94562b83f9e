"""Background work waiting on one version's batcher: whole requests, taken a slice at a time.

A job hands the batcher whole batches of its rows at once (a chunk's worth), so rows are always
waiting when a batch is formed and the engine never idles for want of them. The batcher takes
exactly the rows it has room for (the spare rows of a live batch, the held floor, a batch of their
own) as a slice of the oldest request: each slice is a `Waiting` of its own in the batch, with its
own future; once a request's every slice is answered, its outputs are joined in row order and its
future is set. A slice that fails fails its request at once and drops the rows not yet taken (the
job then splits that request to find the bad rows, as for any failed batch).

Owned by the batcher's event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mlserve.batching.queue import Waiting

Tensors = dict[str, np.ndarray]


@dataclass(slots=True, eq=False)
class BackgroundRequest:
    """One background request: its rows, how many are taken, and the slices that carry them."""

    inputs: Tensors
    num_rows: int
    enqueued_at: float
    future: asyncio.Future
    num_taken: int = 0
    slices: list[Waiting] = field(default_factory=list)


class BackgroundQueue:
    """Background requests in arrival order; `take` cuts the rows one batch has room for."""

    def __init__(self) -> None:
        self._requests: deque[BackgroundRequest] = deque()
        self.num_rows = 0
        """Rows waiting, not yet taken into a batch."""

    def __len__(self) -> int:
        return len(self._requests)

    def push(self, inputs: Tensors, num_rows: int, now: float, future: asyncio.Future) -> BackgroundRequest:
        """Queue a request whose outputs `future` receives; the request is what `remove` takes back."""
        request = BackgroundRequest(inputs, num_rows, now, future)
        self._requests.append(request)
        self.num_rows += num_rows
        return request

    def remove(self, request: BackgroundRequest) -> None:
        """Drop a cancelled request's rows not yet taken (slices already in a batch still run)."""
        if request in self._requests:
            self._requests.remove(request)
            self.num_rows -= request.num_rows - request.num_taken

    def take(self, max_rows: int | None) -> list[Waiting]:
        """Slices of the oldest requests, `max_rows` rows in all (fewer when fewer wait); None takes
        the next request whole (a model without batching)."""
        taken: list[Waiting] = []
        room = max_rows
        while self._requests and (room is None or room > 0):
            request = self._requests[0]
            start = request.num_taken
            count = request.num_rows - start if room is None else min(room, request.num_rows - start)
            taken.append(self._slice(request, start, count))
            self.num_rows -= count
            if request.num_taken == request.num_rows:
                self._requests.popleft()
            if room is None:
                break
            room -= count
        return taken

    def _slice(self, request: BackgroundRequest, start: int, count: int) -> Waiting:
        whole = start == 0 and count == request.num_rows
        inputs = request.inputs if whole else {n: a[start:start + count] for n, a in request.inputs.items()}
        future = request.future.get_loop().create_future()
        piece = Waiting(inputs, count, 0, request.enqueued_at, future=future)
        request.num_taken += count
        request.slices.append(piece)
        future.add_done_callback(lambda _f: self._answered(request))
        return piece

    def _answered(self, request: BackgroundRequest) -> None:
        """A slice came back: fail the request on its first error, answer it once every row has."""
        if request.future.done():
            for piece in request.slices:  # retrieved, so a late failure of a dropped request logs nothing
                if piece.future.done() and not piece.future.cancelled():
                    piece.future.exception()
            return
        failed = next((p.future for p in request.slices if p.future.done() and
                       (p.future.cancelled() or p.future.exception() is not None)), None)
        if failed is not None:
            self.remove(request)
            request.future.set_exception(failed.exception() if not failed.cancelled() else asyncio.CancelledError())
            return
        if request.num_taken < request.num_rows or not all(p.future.done() for p in request.slices):
            return
        outputs = [p.future.result() for p in request.slices]
        if len(outputs) == 1:
            request.future.set_result(outputs[0])
        else:
            request.future.set_result({n: np.concatenate([o[n] for o in outputs]) for n in outputs[0]})
