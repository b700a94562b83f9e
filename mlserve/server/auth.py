"""Who may call what: the path policy and the key ring the auth middleware consults.

The policy works on path prefixes so routes added later are covered without being listed:
`/v2/health/`, vLLM's `/health` and `/version`, and the status page's static files (`/`, `/ui/`; its
data at `/status` is not) are open, `/metrics` is open by setting, `/admin/` and `/v2/repository/` need the
admin scope and are served only on loopback or when enabled, everything else needs `infer`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum, auto
from pathlib import Path

from mlserve import keys as keyfile
from mlserve.config import AuthConfig
from mlserve.errors import Overloaded
from mlserve.keys import ApiKey
from mlserve.server.ratelimit import TenantLimiter

log = logging.getLogger("mlserve.auth")

OPEN_PREFIXES = ("/v2/health/", "/ui/")
OPEN_PATHS = ("/", "/health", "/version")
ADMIN_PREFIXES = ("/admin", "/v2/repository")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_CACHE_SIZE = 4096
MAX_VERIFYING = 32
"""Key hashes being computed at once; past it a new one is refused (scrypt costs tens of ms)."""


class Access(Enum):
    OPEN = auto()
    INFER = auto()
    ADMIN = auto()
    DISABLED = auto()


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


@dataclass(frozen=True, slots=True)
class PathPolicy:
    """Maps a request path to what it needs."""

    metrics_open: bool
    admin_served: bool

    @classmethod
    def from_config(cls, auth: AuthConfig, host: str) -> PathPolicy:
        return cls(auth.metrics_open, auth.admin_enabled or is_loopback(host))

    def access(self, path: str) -> Access:
        if path.startswith(OPEN_PREFIXES) or path in OPEN_PATHS or (self.metrics_open and path == "/metrics"):
            return Access.OPEN
        if any(path == prefix or path.startswith(prefix + "/") for prefix in ADMIN_PREFIXES):
            return Access.ADMIN if self.admin_served else Access.DISABLED
        return Access.INFER


class KeyRing:
    """The live keys, reloadable; verifies bearer tokens and keeps per-key limits in step."""

    def __init__(self, path: Path | None, limiter: TenantLimiter) -> None:
        self.path = path
        self.limiter = limiter
        self._keys: dict[str, ApiKey] = {}
        self._memo_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, str | None] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlserve-auth")
        self._num_verifying = 0
        if path is not None:
            self.reload()

    @property
    def is_enabled(self) -> bool:
        return self.path is not None

    def reload(self) -> None:
        """Re-read the keys file; a bad file keeps the previous keys (and says so)."""
        assert self.path is not None
        try:
            loaded = keyfile.read_keys(self.path)
        except (ValueError, OSError) as exc:
            log.error("keys file not reloaded, keeping %d key(s): %s", len(self._keys), exc)
            return
        self._keys = {k: v for k, v in loaded.items() if not v.revoked}
        self._verified.clear()
        for key in self._keys.values():
            self.limiter.configure(key.key_id, key.rps, key.concurrency)
        self.limiter.forget_others(set(self._keys))
        log.info("keys file %s: %d live key(s)", self.path, len(self._keys))

    async def authenticate(self, token: str) -> ApiKey | None:
        """The live key a token belongs to, or None. The hash runs off the event loop, a bounded
        number at a time; a token seen before (right or wrong) is answered from memory."""
        parts = keyfile.split_token(token)
        if parts is None or parts[0] not in self._keys:
            return None
        # A keyed hash names the token in memory without keeping it; blake2b is one C call.
        memo = hashlib.blake2b(token.encode(), key=self._memo_key, digest_size=16).digest()
        if memo in self._verified:
            key_id = self._verified[memo]
            return self._keys.get(key_id) if key_id is not None else None
        key = self._keys[parts[0]]
        if self._num_verifying >= MAX_VERIFYING:
            raise Overloaded(f"{self._num_verifying} API keys are being verified; retry shortly")
        self._num_verifying += 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._executor, keyfile.verify, key, parts[1])
        finally:
            self._num_verifying -= 1
        self._verified[memo] = key.key_id if ok else None
        if len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return self._keys.get(key.key_id) if ok else None

    def close(self) -> None:
        self._executor.shutdown(wait=False)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
