"""Response cache of one model version: an LRU from a hash of the input bytes to the outputs."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Protocol

import numpy as np

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


class ResponseCache:
    """Owns one version's cached outputs; a hit never reaches the batcher.

    Each loaded version gets its own cache, built and dropped with it, and the key carries the
    model and version too: a new version (or a reloaded artifact) never answers from the old one's.
    """

    def __init__(self, model: str, version: str, size: int, hits: _Counter | None = None,
                 misses: _Counter | None = None) -> None:
        self._model = model
        self._version = version
        self._size = size
        self._entries: OrderedDict[bytes, Tensors] = OrderedDict()
        self._hits = hits
        self._misses = misses

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

    def put(self, key: bytes, outputs: Tensors) -> None:
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
