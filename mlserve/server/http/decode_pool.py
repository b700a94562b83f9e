"""Large v2 JSON bodies are decoded in a child process.

orjson holds the GIL for a whole parse: a 64 MiB JSON body takes hundreds of milliseconds, and no
thread of this process (the event loop included) runs Python meanwhile, so decoding it on a thread
would still freeze every other request. A child process parses it instead and sends back the
decoded arrays (a memcpy to unpickle). Binary-tensor bodies never come here: their JSON header is
small and their tensors are views of the body. The body reaches the child through a file in
/dev/shm (written with os.write, which releases the GIL), not a pickle. The child starts on first use ("spawn": the server
process has engine threads, which a fork would copy in an unknown state) and dies with the server
(mlserve/lifeline.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Mapping

from mlserve.config import LimitsConfig
from mlserve.lifeline import die_with_parent
from mlserve.server.http.v2_codec import Decoded, decode_infer_request

LARGE_JSON_BYTES = 1 << 20
"""JSON bodies at least this large are parsed in the child process."""


def _decode(path: str, header_length: str | None, model: str, version: str | None, limits: LimitsConfig,
            arrived: float) -> Decoded:
    """In the child: read the body the server wrote, forget the file, decode."""
    with open(path, "rb") as fh:
        body = fh.read()
    os.unlink(path)
    return decode_infer_request(body, header_length, model, version, {}, limits, arrived)


def _write(directory: str, body: bytes) -> str:
    """On a thread: os.write releases the GIL while the body is copied (pickling it would not)."""
    fd, path = tempfile.mkstemp(prefix="mlserve-body-", dir=directory)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return path


class DecodePool:
    """One child process for decoding large JSON bodies, started on first use, stopped with the server."""

    def __init__(self, limits: LimitsConfig) -> None:
        self._limits = limits
        self._executor: ProcessPoolExecutor | None = None
        self._directory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

    async def decode(self, body: bytes, header_length: str | None, model: str, version: str | None,
                     headers: Mapping[str, str], arrived: float) -> Decoded:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=die_with_parent, initargs=(os.getpid(),))
        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(None, _write, self._directory, body)
        try:
            decoded = await loop.run_in_executor(self._executor, _decode, path, header_length, model, version,
                                                 self._limits, arrived)
        finally:
            if os.path.exists(path):  # the child never got to it
                os.unlink(path)
        # Headers (for a sticky key taken from a header) stay in this process.
        return dataclasses.replace(decoded, request=dataclasses.replace(decoded.request, headers=headers))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
