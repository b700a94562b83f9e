"""Response cache of one model version: an LRU from a hash of the input bytes to the outputs, and
(where replicas share a state store) a second, shared level that every replica reads and fills.

Threading and cost: all on the event loop. The local level is a dict lookup. The shared level is
asked only on a local miss: one store read, bounded by SHARED_LOOKUP_TIMEOUT_S and skipped outright
while the store is away; a hit fills the local level. After a compute, the write to the shared level
runs as its own task (at most MAX_PENDING_WRITES at once, more are dropped): the answer never waits
for it. A store error on either path is a miss, never a failed request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections import OrderedDict
from typing import Protocol

import numpy as np
import orjson

from mlserve.spec.model import BatchingSpec
from mlserve.state import BadStateData, StateStore, StateUnavailable

log = logging.getLogger("mlserve.cache")

SHARED_LOOKUP_TIMEOUT_S = 0.1
"""Longest an inference waits for the shared level before it computes instead."""
MAX_PENDING_WRITES = 64
"""Shared-level writes in flight per version; past this a computed response is not shared."""
_MAGIC = b"MLC1"

Tensors = dict[str, np.ndarray]


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


def _feed(digest, array: np.ndarray) -> None:
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    if array.dtype == object:
        for value in array.ravel():
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            digest.update(len(data).to_bytes(4, "little"))
            digest.update(data)
    else:
        digest.update(np.ascontiguousarray(array).data)


def input_key(model: str, version: str, inputs: Tensors) -> bytes:
    """Model, version, and every input's name, dtype, shape and bytes, hashed to 16 bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{model}\0{version}\0".encode())
    for name in sorted(inputs):
        digest.update(name.encode() + b"\0")
        _feed(digest, inputs[name])
    return digest.digest()


def encode_outputs(outputs: Tensors, max_bytes: int) -> bytes | None:
    """Outputs as bytes for the shared level (a JSON header, then each tensor's bytes; no pickle), or
    None when they are larger than `max_bytes` or hold values other than numbers and bytes."""
    header, parts, size = [], [], 0
    for name, array in outputs.items():
        if array.dtype == object:
            if not all(isinstance(v, bytes) for v in array.flat):
                return None
            data = b"".join(struct.pack("<I", len(v)) + v for v in array.flat)
        elif array.dtype.kind in "biuf":
            if array.nbytes + size > max_bytes:
                return None
            data = np.ascontiguousarray(array).tobytes()
        else:
            return None
        size += len(data)
        if size > max_bytes:
            return None
        header.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape), "nbytes": len(data)})
        parts.append(data)
    head = orjson.dumps(header)
    return b"".join([_MAGIC, struct.pack("<I", len(head)), head, *parts])


def decode_outputs(raw: bytes) -> Tensors:
    """The outputs `encode_outputs` wrote (read-only arrays); ValueError on anything else."""
    try:
        if raw[:4] != _MAGIC:
            raise ValueError("not a cached response")
        (head_len,) = struct.unpack_from("<I", raw, 4)
        offset = 8 + head_len
        out: Tensors = {}
        for item in orjson.loads(raw[8:offset]):
            data = raw[offset:offset + item["nbytes"]]
            if len(data) != item["nbytes"]:
                raise ValueError("cached response is cut short")
            offset += item["nbytes"]
            out[item["name"]] = _array(data, item["dtype"], tuple(item["shape"]))
        return out
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a cached response ({exc})") from None


def _array(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype != "|O":
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    values, at = [], 0
    while at < len(data):
        (n,) = struct.unpack_from("<I", data, at)
        values.append(data[at + 4:at + 4 + n])
        at += 4 + n
    array = np.empty(len(values), dtype=object)
    array[:] = values
    array = array.reshape(shape)
    array.flags.writeable = False
    return array


class SharedLevel:
    """Owns one version's entries in the shared state store: key `cache:<model>:<version>:<artifact>:<input hash>`,
    each with a TTL, at most `shared_cache_entries` per version, none over `shared_cache_max_bytes`.

    The artifact's fingerprint is in the key: a reloaded artifact under the same version number never
    answers from the old one's entries, and replicas that loaded the same files share theirs.
    """

    def __init__(self, store: StateStore, model: str, version: str, fingerprint: str, spec: BatchingSpec,
                 hits: _Counter | None = None, misses: _Counter | None = None) -> None:
        self._store = store
        self._prefix = f"cache:{model}:{version}:{fingerprint[:16]}"
        self._ttl_s = spec.shared_cache_ttl_s
        self._max_entries = spec.shared_cache_entries
        self._max_bytes = spec.shared_cache_max_bytes
        self._hits = hits
        self._misses = misses
        self._pending: set[asyncio.Task] = set()

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    async def get(self, key: bytes) -> Tensors | None:
        if not self._store.is_up:
            return None
        try:
            raw = await asyncio.wait_for(self._store.get_bytes(f"{self._prefix}:{key.hex()}"), SHARED_LOOKUP_TIMEOUT_S)
        except (StateUnavailable, BadStateData, asyncio.TimeoutError):
            return None
        outputs = None
        if raw is not None:
            try:
                outputs = decode_outputs(raw)
            except ValueError as exc:
                log.warning("shared cache %s: entry refused: %s", self._prefix, exc)
        counter = self._misses if outputs is None else self._hits
        if counter is not None:
            counter.inc()
        return outputs

    def put_later(self, key: bytes, outputs: Tensors) -> None:
        """Share a computed response in its own task; the caller does not wait for the write."""
        if not self._store.is_up or len(self._pending) >= MAX_PENDING_WRITES:
            return
        raw = encode_outputs(outputs, self._max_bytes)
        if raw is None:
            return
        task = asyncio.get_running_loop().create_task(self._write(f"{self._prefix}:{key.hex()}", raw))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, name: str, raw: bytes) -> None:
        try:
            await self._store.set_bytes(name, raw, self._ttl_s, index=f"{self._prefix}:index",
                                        max_entries=self._max_entries)
        except (StateUnavailable, BadStateData) as exc:
            log.debug("shared cache %s: write skipped: %s", self._prefix, exc)


class ResponseCache:
    """Owns one version's cached outputs; a hit never reaches the batcher.

    Each loaded version gets its own cache, built and dropped with it, and the key carries the
    model and version too: a new version (or a reloaded artifact) never answers from the old one's.
    `shared` is the second level (None: this process's LRU only).
    """

    def __init__(self, model: str, version: str, size: int, hits: _Counter | None = None,
                 misses: _Counter | None = None, shared: SharedLevel | None = None) -> None:
        self._model = model
        self._version = version
        self._size = size
        self._entries: OrderedDict[bytes, Tensors] = OrderedDict()
        self._hits = hits
        self._misses = misses
        self.shared = shared

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, inputs: Tensors) -> bytes:
        return input_key(self._model, self._version, inputs)

    def get(self, key: bytes) -> Tensors | None:
        outputs = self._entries.get(key)
        if outputs is None:
            if self._misses is not None:
                self._misses.inc()
            return None
        self._entries.move_to_end(key)
        if self._hits is not None:
            self._hits.inc()
        return outputs

    async def get_shared(self, key: bytes) -> Tensors | None:
        """After a local miss: the shared level's answer (kept locally too), or None."""
        if self.shared is None:
            return None
        outputs = await self.shared.get(key)
        if outputs is not None:
            self._keep(key, outputs)
        return outputs

    def put(self, key: bytes, outputs: Tensors) -> None:
        """A computed response: kept locally, and shared in the background where there is a shared level."""
        self._keep(key, outputs)
        if self.shared is not None:
            self.shared.put_later(key, outputs)

    def _keep(self, key: bytes, outputs: Tensors) -> None:
        """Keep a read-only copy: the outputs are views of a whole batch, which need not stay alive."""
        kept = {}
        for name, array in outputs.items():
            copy = np.array(array, copy=True)
            copy.flags.writeable = False
            kept[name] = copy
        self._entries[key] = kept
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
