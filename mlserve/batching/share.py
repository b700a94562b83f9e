"""How one version's batches are split between live requests and background work (in-server jobs).

Two ways, chosen per version at load.

**In the live batches** (the default): the rule applied each time a batch is formed (`max_rows` is
the model's max_batch_size; live traffic is "about" when a live request ran or waited within the
last `window_s`):

1. Live first: a batch takes the waiting live requests first (by level, as always).
2. Short batches beside live traffic: while live traffic is about, a batch that carries background
   rows holds at most a short batch, `max_rows // SHORT_PART` rows in all (live rows are never cut for it):
   background rows fill what the live rows leave of it, and with no live request waiting they run
   alone, a short batch at a time. A live request so waits behind at most one batch holding
   background rows, and that batch, like its own, is short.
3. A floor (both ways): while background work waits and its share of the rows run over the last
   `window_s` is below `min_share`, a batch holds `ceil(min_share * max_rows)` rows for it even when
   live requests could fill them. When the first waiting live request is too large to leave them
   free, the live requests run and the held rows are owed; once a short batch of them is owed (or
   every background row waiting, if fewer), they run as a batch of their own. At that floor a job reports
   `waiting: live load`.
4. With no live traffic about, background rows run in full batches.

What the first way guarantees, given that background work keeps rows waiting (a job queues a whole
chunk's batches at once: jobs/sharing.py): the engine never runs a batch without background rows unless
live rows fill a short batch, and never waits for background rows beyond the hand-off from one
batch to the next through the event loop (they are queued before it asks). Beside live load that
takes a fraction u of the engine's time, background work therefore gets the other 1 - u in short
batches, and under any live load at least `min_share` of the rows. At half capacity (u = 0.5) that is
half the engine; the rate it gives is half the rate of short batches, which differs from the rate of
full batches by the engine's per-row cost at half the batch size and one hand-off through
the event loop per short batch.

**On a background thread** (`[batching] background_thread = true`, only where the engine runs two
batches at once on two threads: ONNX on CPU with one intra-op thread). Background rows run in full
batches on one worker thread of their own, beside the live batches instead of in them; the thread
lowers its own OS priority to the lowest (nice BACKGROUND_NICE), so the kernel gives it only CPU
time that no thread of normal priority wants. Live batches carry no background rows except the
floor (rule 3), so a live request never waits behind background rows, and live work that becomes
runnable takes the CPU back within a scheduler tick. Background work so gets what live load leaves
of the machine, not only of the engine's one thread. While live rows enough for a full batch wait
(the engine is behind on live load), the thread takes no new batch; the floor still moves the
job then, in live batches. Without that pause live load at full capacity kept 0.75 of its rows/s
beside a job on the thread, and 0.88 with it, as beside a job in the live batches (most likely the
interpreter's lock, which the thread takes around each batch and the live path at saturation waits
on). What it still costs: live p99 beside a running job at half capacity, 2.2-2.5x the p99
without it against 1.4-1.6x with the job in the live batches (docs/batch.md has the figures).

A third way stands outside the batcher: with `[batching] background_process = true` a job runs whole
in a child process at the lowest CPU priority (jobs/child.py), and only reads from here whether live
rows fill whole batches (`is_live_backlogged`), to say `waiting: live load`.

Pure bookkeeping with no clock of its own: callers pass `now`. Not thread-safe; the batcher's
event loop owns it.
"""

from __future__ import annotations

import math

DEFAULT_MIN_SHARE = 0.1
DEFAULT_WINDOW_S = 1.0
BACKGROUND_NICE = 19
"""How far the background thread lowers its own OS priority: the lowest nice value, so the kernel
runs it only on CPU time no live thread of the machine wants."""
SHORT_PART = 2
"""A short batch is `max_rows // SHORT_PART` rows. At a quarter, short batches ran the job at 0.67-0.69
of the rate of full ones (16 rows on the MLP example: the engine's cost per row and the hand-off from
one batch to the next weigh on small batches), too little for the guarantee below to reach 0.4 of the
job's rate alone; at a half they run at 0.86-0.87, and a live request waits behind at most one batch
of half the engine's largest (benchmarks/batch.py, figure 3c)."""


def short_rows(max_rows: int) -> int:
    """The rows of a short batch (rule 2)."""
    return max(1, max_rows // SHORT_PART)


class BackgroundShare:
    """Decayed counts of live and background rows run, and what the next batch owes background work."""

    def __init__(self, min_share: float = DEFAULT_MIN_SHARE, window_s: float = DEFAULT_WINDOW_S) -> None:
        if not 0.0 <= min_share <= 0.5:
            raise ValueError(f"the background share floor must lie in 0..0.5, got {min_share}")
        self.min_share = min_share
        self._window_s = window_s
        self._live = 0.0
        self._background = 0.0
        self._at = 0.0
        self._live_seen_at = -math.inf
        self._floor_used_at = -math.inf
        self._backlog_at = -math.inf

    def _decay(self, now: float) -> None:
        if now > self._at:
            factor = math.exp(-(now - self._at) / self._window_s)
            self._live *= factor
            self._background *= factor
            self._at = now

    def share(self, now: float) -> float:
        """Background rows over all rows run in about the last window (0 when nothing ran)."""
        self._decay(now)
        total = self._live + self._background
        return self._background / total if total > 0 else 0.0

    def note_live_waiting(self, now: float) -> None:
        self._live_seen_at = now

    def held_rows(self, max_rows: int, now: float) -> int:
        """Rows the next batch keeps for waiting background work although live requests wait (rule 3)."""
        if self.min_share <= 0 or self.share(now) >= self.min_share:
            return 0
        self._floor_used_at = now
        return max(1, math.ceil(self.min_share * max_rows))

    def held_rows_due(self, now: float) -> bool:
        """Whether the next batch would hold rows for background work (rule 3), without using them."""
        return self.min_share > 0 and self.share(now) < self.min_share

    def alone_rows(self, max_rows: int, now: float) -> int:
        """The most background rows a batch with no live request in it takes (rules 2 and 4)."""
        if now - self._live_seen_at < self._window_s:
            return short_rows(max_rows)
        return max_rows

    @staticmethod
    def spare_rows(max_rows: int, live_rows: int, held: int) -> int:
        """Background rows beside `live_rows` live ones (rules 2 and 3): up to a short batch in all,
        never fewer than the `held` floor, never past `max_rows`."""
        return min(max_rows - live_rows, max(held, short_rows(max_rows) - live_rows))

    def ran(self, live_rows: int, background_rows: int, now: float) -> None:
        self._decay(now)
        self._live += live_rows
        self._background += background_rows
        if live_rows:
            self._live_seen_at = now

    def note_live_backlog(self, now: float) -> None:
        """A live batch was formed with rows enough for a full batch waiting: live load fills the engine."""
        self._backlog_at = now

    def is_live_backlogged(self, now: float) -> bool:
        """Live rows filled a whole batch within the window (what slows a job in a child process,
        which the share rule does not see: jobs/child.py)."""
        return now - self._backlog_at < self._window_s

    def is_held_to_floor(self, now: float) -> bool:
        """Background work got only its floor within the window: live load fills the engine."""
        return now - self._floor_used_at < self._window_s
