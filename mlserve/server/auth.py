"""Who may call what: the path policy and the key ring the auth middleware consults.

The policy works on path prefixes so routes added later are covered without being listed:
`/v2/health/`, vLLM's `/health` and `/version`, and the status page's static files (`/`, `/ui/`; its
data at `/status` is not) are open, `/metrics` is open by setting, `/admin/`, `/v2/repository/` and
`/v2/batch/` (jobs read and write server files) need the admin scope and are served only on loopback
or when enabled, everything else needs `infer`.

Failed key checks are throttled per (client address, key id): only a token naming a live key costs a
hash, so only such tokens are counted, and failures against one key never lock out another. The
client address is the socket's peer, or the X-Forwarded-For hop a trusted proxy names.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import secrets
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum, auto
from pathlib import Path

from mlserve import keys as keyfile
from mlserve.config import AuthConfig
from mlserve.errors import Overloaded
from mlserve.keys import ApiKey
from mlserve.server.ratelimit import Clock, FailureThrottle, TenantLimiter, TokenBucket

log = logging.getLogger("mlserve.auth")

OPEN_PREFIXES = ("/v2/health/", "/ui/")
OPEN_PATHS = ("/", "/health", "/version")
ADMIN_PREFIXES = ("/admin", "/v2/repository", "/v2/batch")
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


@dataclass(frozen=True, slots=True)
class AuthResult:
    """What a key check found: the live key (None when the token is not one), or that the client
    address has failed too often and must wait `retry_after_s` (nothing was checked then)."""

    key: ApiKey | None = None
    retry_after_s: float | None = None
    """Set when this address has failed too often with the key the token names."""

    @property
    def is_throttled(self) -> bool:
        return self.retry_after_s is not None


class KeyRing:
    """The live keys, reloadable; verifies bearer tokens and keeps per-key limits in step.

    Verified tokens are remembered in an LRU under a keyed digest (wrong ones never are, so a flood
    of bad tokens cannot push good ones out). A reload keeps what it remembered for keys whose
    record is unchanged. Checks that need a hash are throttled per (client address, key id)."""

    def __init__(self, path: Path | None, limiter: TenantLimiter, throttle: FailureThrottle | None = None) -> None:
        self.path = path
        self.limiter = limiter
        self.throttle = throttle or FailureThrottle()
        self._keys: dict[str, ApiKey] = {}
        self._memo_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._checking: dict[bytes, asyncio.Future[bool]] = {}
        """Checks under way, by token digest: requests that bring the same token meanwhile (a client
        opening many connections at once) wait for that one check instead of each spending an attempt."""
        workers = max(1, min(4, os.cpu_count() or 1))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlserve-auth")
        self._num_verifying = 0
        self.generation = 0
        """Counts reloads, so a long-lived caller (a gRPC stream) knows when to check its key again."""
        if path is not None:
            self.reload()

    @property
    def is_enabled(self) -> bool:
        return self.path is not None

    @property
    def num_remembered(self) -> int:
        return len(self._verified)

    def reload(self) -> None:
        """Re-read the keys file; a bad file keeps the previous keys (and says so)."""
        assert self.path is not None
        try:
            loaded = keyfile.read_keys(self.path)
        except (ValueError, OSError) as exc:
            log.error("keys file not reloaded, keeping %d key(s): %s", len(self._keys), exc)
            return
        old, self._keys = self._keys, {k: v for k, v in loaded.items() if not v.revoked}
        self._verified = OrderedDict(
            (memo, key_id) for memo, key_id in self._verified.items()
            if _same_secret(old.get(key_id), self._keys.get(key_id))
        )
        self.generation += 1
        for key in self._keys.values():
            self.limiter.configure(key.key_id, key.rps, key.concurrency, key.quota, key.quota_period, key.token_quota)
        self.limiter.forget_others(set(self._keys))
        log.info("keys file %s: %d live key(s)", self.path, len(self._keys))

    async def authenticate(self, token: str, client_addr: str = "") -> AuthResult:
        """The live key a token belongs to. A remembered token is answered from memory; a malformed
        one, or one naming no live key, is refused at once (no hash: nothing to throttle). Any other
        check costs (client address, key id) one failed attempt unless it succeeds, and a pair out of
        attempts is told to wait, so a flood of bad tokens from an address (a proxy all clients
        share) cannot lock out a valid key. Hashes run off the event loop, a bounded number at a time."""
        parts = keyfile.split_token(token)
        if parts is None or parts[0] not in self._keys:
            return AuthResult(None)
        # A keyed hash names the token in memory without keeping it; blake2b is one C call.
        memo = hashlib.blake2b(token.encode(), key=self._memo_key, digest_size=16).digest()
        key_id = self._verified.get(memo)
        if key_id is not None:
            self._verified.move_to_end(memo)
            return AuthResult(self._keys[key_id])
        under_way = self._checking.get(memo)
        if under_way is not None:
            ok = await asyncio.shield(under_way)
            return AuthResult(self._keys.get(parts[0]) if ok else None)
        wait = self.throttle.try_attempt(client_addr, parts[0])
        if wait is not None:
            return AuthResult(None, wait)
        check = self._checking[memo] = asyncio.get_running_loop().create_future()
        try:
            ok = await self._verify(self._keys[parts[0]], parts[1])
        except BaseException as exc:
            if isinstance(exc, Overloaded):
                self.throttle.refund(client_addr, parts[0])
            check.set_exception(exc if isinstance(exc, Exception) else Overloaded("key check cancelled; retry"))
            check.exception()  # retrieved: waiters re-raise it, nobody is left to log it unread
            raise
        finally:
            del self._checking[memo]
        check.set_result(ok)
        if not ok:
            return AuthResult(None)
        self.throttle.refund(client_addr, parts[0])
        self._verified[memo] = parts[0]
        while len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return AuthResult(self._keys.get(parts[0]))

    async def _verify(self, key: ApiKey, secret: str) -> bool:
        if self._num_verifying >= MAX_VERIFYING:
            raise Overloaded(f"{self._num_verifying} API keys are being verified; retry shortly")
        self._num_verifying += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, keyfile.verify, key, secret)
        finally:
            self._num_verifying -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False)


def _same_secret(old: ApiKey | None, new: ApiKey | None) -> bool:
    return old is not None and new is not None and (old.salt, old.hash) == (new.salt, new.hash)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The reverse proxies whose X-Forwarded-For is believed (`[server] trusted_proxies`)."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: tuple[str, ...]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(entry, strict=False) for entry in entries))

    def is_trusted(self, text: str) -> bool:
        address = _address(text)
        return address is not None and any(address in network for network in self.networks)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The peer itself, unless it is a trusted proxy: then the nearest X-Forwarded-For hop that
        is not one (each proxy appends its peer, so hops further left are the client's to invent).
        A hop that is not an address stops the walk at the last trusted one."""
        if not forwarded_for or not self.networks or not self.is_trusted(peer):
            return peer
        nearest = peer
        for hop in reversed(forwarded_for.split(",")):
            address = _address(hop)
            if address is None:
                return nearest
            if not self.is_trusted(hop):
                return str(address)
            nearest = str(address)
        return nearest


ADMIN_LOG_BURST = 10.0
ADMIN_LOG_PER_S = 1.0


class AdminAudit:
    """Logs admin requests served with no API keys configured: each one, up to a burst and then one
    a second, so a flood costs a bounded number of lines (the ones left out are counted)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._bucket = TokenBucket(ADMIN_LOG_PER_S, ADMIN_LOG_BURST)
        self._num_skipped = 0

    def record(self, method: str, route: str, client: str) -> None:
        if self._bucket.try_take(self._clock()) is not None:
            self._num_skipped += 1
            return
        skipped = f" ({self._num_skipped} more not logged)" if self._num_skipped else ""
        self._num_skipped = 0
        log.warning("admin request served without an API key: %s %s from %s%s", method, route[:200], client, skipped)


def warn_if_admin_open(policy: PathPolicy, keyring: KeyRing) -> None:
    """At start: say loudly when anyone who reaches the port may load models and change traffic."""
    if policy.admin_served and not keyring.is_enabled:
        log.warning("admin routes (%s) are served WITHOUT API keys: anything that can reach this port can "
                    "load and run models and change traffic; set [auth] keys_file (`mlserve keys create`)",
                    ", ".join(ADMIN_PREFIXES))
