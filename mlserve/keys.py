"""API keys: the keys file, salted hashes, and create / list / revoke.

A key reads `mls_<key_id>_<secret>`. The file keeps the key id (public: it names the key in logs
and `keys list`), a random salt and the scrypt hash of the secret, never the secret itself. The
secret is 32 random bytes, so the hash guards a leaked file rather than a guessable password;
scrypt's cost is paid once per key per process (verified tokens are remembered in memory under a
keyed digest that never leaves the process).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCOPES = ("infer", "admin")
QUOTA_PERIODS = ("day", "month")
PREFIX = "mls"
_TOKEN = re.compile(r"^mls_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key's record as the keys file holds it: who, what it may do, and its limits."""

    key_id: str
    name: str
    salt: str
    hash: str
    scopes: tuple[str, ...]
    rps: float = 0.0
    """Requests per second (token bucket refill); 0 = unlimited."""
    concurrency: int = 0
    """Requests in flight at once; 0 = unlimited."""
    priority: int | None = None
    """Batcher priority class given to this key's requests unless they name one."""
    created: float = field(default_factory=time.time)
    revoked: bool = False
    quota: int = 0
    """Requests per quota_period across every replica; 0 = unlimited."""
    quota_period: str = "day"
    """day or month (UTC calendar windows)."""
    token_quota: int = 0
    """Generation tokens (prompt and completion) per quota_period across every replica; 0 = unlimited."""

    def __post_init__(self) -> None:
        bad = set(self.scopes) - set(SCOPES)
        if not self.scopes or bad:
            raise ValueError(f"key {self.name!r}: scopes must be among {', '.join(SCOPES)}, got {list(self.scopes)}")
        if self.rps < 0 or self.concurrency < 0:
            raise ValueError(f"key {self.name!r}: rps and concurrency must be >= 0")
        if isinstance(self.quota, bool) or not isinstance(self.quota, int) or self.quota < 0:
            raise ValueError(f"key {self.name!r}: quota must be a whole number >= 0, got {self.quota!r}")
        if isinstance(self.token_quota, bool) or not isinstance(self.token_quota, int) or self.token_quota < 0:
            raise ValueError(f"key {self.name!r}: token_quota must be a whole number >= 0, got {self.token_quota!r}")
        if self.quota_period not in QUOTA_PERIODS:
            raise ValueError(f"key {self.name!r}: quota_period must be day or month, got {self.quota_period!r}")

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, maxmem=64 * 1024 * 1024, dklen=32, **_SCRYPT)


def split_token(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def verify(key: ApiKey, secret: str) -> bool:
    """Constant-time comparison of the secret's hash with the stored one."""
    expected = bytes.fromhex(key.hash)
    return hmac.compare_digest(hash_secret(secret, bytes.fromhex(key.salt)), expected)


def read_keys(path: Path) -> dict[str, ApiKey]:
    """key_id -> ApiKey; a missing file is an empty set of keys. Raises ValueError on a bad file."""
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text() or "{}")
        records = raw.get("keys", [])
        keys = {}
        for record in records:
            key = ApiKey(**{**record, "scopes": tuple(record["scopes"])})
            keys[key.key_id] = key
        return keys
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"keys file {path}: {exc}") from None


def write_keys(path: Path, keys: dict[str, ApiKey]) -> None:
    """Atomic rewrite, readable by the owner only: a new temp file of its own (created exclusively,
    so never a link someone left there), written and synced, then renamed over the file."""
    records = [{**asdict(k), "scopes": list(k.scopes)} for k in keys.values()]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"keys": records}, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on `<path>.lock` for a read-modify-write of the keys file, so two
    `mlserve keys` runs at once do not lose each other's change (the server only reads)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def create_key(
    path: Path, name: str, scopes: tuple[str, ...], rps: float = 0.0, concurrency: int = 0,
    priority: int | None = None, quota: int = 0, quota_period: str = "day", token_quota: int = 0,
) -> str:
    """Add a key to the file and return the token, which is stored nowhere in clear."""
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    key = ApiKey(key_id, name, salt.hex(), hash_secret(secret, salt).hex(), scopes, rps, concurrency, priority,
                 quota=quota, quota_period=quota_period, token_quota=token_quota)
    with locked(path):
        keys = read_keys(path)
        if any(k.name == name and not k.revoked for k in keys.values()):
            raise ValueError(f"a key named {name!r} already exists")
        keys[key_id] = key
        write_keys(path, keys)
    return f"{PREFIX}_{key_id}_{secret}"


def revoke_key(path: Path, name_or_id: str) -> ApiKey:
    with locked(path):
        keys = read_keys(path)
        for key in keys.values():
            if not key.revoked and name_or_id in (key.name, key.key_id):
                keys[key.key_id] = _replace(key, revoked=True)
                write_keys(path, keys)
                return keys[key.key_id]
    raise ValueError(f"no live key named {name_or_id!r}")


def describe(key: ApiKey) -> dict[str, Any]:
    """What `keys list` prints: everything but the salt and hash."""
    return {
        "id": key.key_id, "name": key.name, "scopes": ",".join(key.scopes), "rps": key.rps,
        "concurrency": key.concurrency, "priority": key.priority,
        "quota": f"{key.quota}/{key.quota_period}" if key.quota else 0,
        "token_quota": f"{key.token_quota}/{key.quota_period}" if key.token_quota else 0, "revoked": key.revoked,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.created)),
    }


def _replace(key: ApiKey, **changes: Any) -> ApiKey:
    return ApiKey(**{**asdict(key), "scopes": key.scopes, **changes})
