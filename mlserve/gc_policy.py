"""How a serving process uses Python's cyclic garbage collector.

A full collection walks every tracked object: after startup that is torch, onnxruntime,
prometheus_client and the loaded models, hundreds of thousands of objects, and each walk stalls the
event loop for tens of milliseconds (the p99 tail). Once the models are loaded the heap is moved to
the permanent generation (`gc.freeze`), so collections only walk what requests allocate; after each
repository reload it is unfrozen, collected once and frozen again, so versions that were swapped out
can still be reclaimed. A larger first-generation threshold makes young collections rarer.
Reference counting, which frees almost everything, is untouched.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass

log = logging.getLogger("mlserve.gc")


@dataclass(frozen=True, slots=True)
class GcPolicy:
    """Freeze the long-lived heap and set the collection thresholds (server settings `gc_*`)."""

    freeze: bool = True
    gen0_threshold: int = 10_000

    def apply(self) -> None:
        if self.gen0_threshold > 0:
            _, gen1, gen2 = gc.get_threshold()
            gc.set_threshold(self.gen0_threshold, gen1, gen2)

    def freeze_heap(self, reason: str) -> None:
        """Collect what is garbage now, then exempt every survivor from later collections."""
        if not self.freeze:
            return
        started = time.monotonic()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.info("heap frozen after %s: %d objects exempt from collection (%.0f ms)", reason,
                 gc.get_freeze_count(), (time.monotonic() - started) * 1e3)
