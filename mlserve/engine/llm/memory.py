"""Allocator setting for CPU decoding: each step allocates and frees the same few large temporaries
(gathered K/V blocks, activations). With glibc's defaults a freed chunk over 128 KiB goes back to the
OS and every page of it faults in again on the next step, which on CPU cost more than the attention
itself. Raising the mmap and trim thresholds keeps those chunks in the heap for reuse."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("mlserve.llm")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD_BYTES = 512 * 2**20


def keep_freed_memory() -> bool:
    """Apply the thresholds to this process (glibc only); True if they took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if not done:
        log.warning("could not raise malloc thresholds; CPU decoding will be slower")
    return done


def free_memory_bytes(device: str) -> int:
    """Memory a new allocation on `device` may take now: CUDA's free bytes, else MemAvailable."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
