"""The browser gate: which Host names the server answers to, which other origins' pages may call it
(CORS), and which body types a request may carry. One pure decision on (method, path, headers), so
the aiohttp middleware and the fast lane apply the same rules; it reads no body and costs a few
dictionary look-ups.

Why: with keys off (`make serve`) any page a developer visits could otherwise drive the server,
upload a model included. Three checks, each closing one way in:
- Host. DNS rebinding points an attacker's name at 127.0.0.1, making their page same-origin with
  the server; its requests still say `Host: attacker.example`. Only the names the server answers to
  pass: loopback names, the bound address, any IP address when bound to all of them (rebinding needs
  a name), and `[server] allowed_hosts`.
- Origin. A browser names the calling page's origin on every cross-origin request and on every
  POST, `no-cors` ones included. An origin other than the server's own is refused unless listed in
  `[server] cors_origins`; listed ones get CORS headers (`cors_headers`, `preflight_headers`).
- Content-Type. The bodies a page may send without a CORS preflight (text/plain, forms, multipart,
  or no type) are refused; every route takes JSON (application/json or */*+json) or
  application/octet-stream (the binary tensor extension, and what tritonclient.http.aio sends). A
  body with no type passes only from clients that are not browsers (no Origin, no Sec-Fetch-*
  headers): tritonclient.http sends none.

gRPC needs HTTP/2 with trailers, which no browser API can send, so it is not gated here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping

from mlserve.config import ServerConfig

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BINARY_TYPE = "application/octet-stream"
BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode")
ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
EXPOSED_HEADERS = ("Inference-Header-Content-Length, Mlserve-Model-Version, Mlserve-Request-Id, "
                   "X-Request-Id, Retry-After, WWW-Authenticate")
PREFLIGHT_MAX_AGE_S = 600
MAX_REQUESTED_HEADERS = 1024
"""Longest Access-Control-Request-Headers echoed back in a preflight answer."""
MAX_REMEMBERED_HOSTS = 1024
"""Host header values whose verdict is remembered (the hot path then does one dict look-up)."""


@dataclass(frozen=True, slots=True)
class BrowserRefusal:
    """Why a request was refused before any handler ran: the HTTP status and a message naming it."""

    status: int
    message: str


def host_name(value: str) -> str:
    """The name part of a Host header or an origin's authority: lower case, no port, no brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback_name(name: str) -> bool:
    address = _ip(name)
    return address.is_loopback if address is not None else name in LOOPBACK_NAMES


def _authority(origin: str) -> tuple[str, str] | None:
    """(scheme, host[:port] without a default port) of an origin; None when it is not scheme://host."""
    scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or not authority or "/" in authority.rstrip("/"):
        return None
    authority = authority.rstrip("/")
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and authority.endswith(default):
        authority = authority[: -len(default)]
    return scheme, authority


def _strip_default_port(host: str) -> str:
    host = host.strip().lower()
    for default in (":80", ":443"):
        if host.endswith(default):
            return host[: -len(default)]
    return host


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def is_json_type(media: str) -> bool:
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def has_body(headers: Mapping[str, str]) -> bool:
    length = headers.get("Content-Length")
    if length is not None:
        return length.strip() not in ("", "0")
    return headers.get("Transfer-Encoding") is not None


@dataclass(frozen=True, slots=True)
class BrowserGate:
    """The Host, Origin and Content-Type rules of one server. `headers` must look names up without
    regard to case (aiohttp's CIMultiDictProxy, multidict.CIMultiDict)."""

    hosts: frozenset[str]
    domains: tuple[str, ...]
    """Allowed ".example.com" entries, leading dot kept: the domain and its subdomains."""
    any_host: bool
    any_ip: bool
    """Bound to every address: a Host that is an IP address passes (rebinding needs a name)."""
    origins: frozenset[str]
    any_origin: bool
    _verdicts: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, server: ServerConfig) -> BrowserGate:
        entries = [host_name(h) if not h.startswith(".") else h.lower().rstrip(".") for h in server.allowed_hosts]
        bound = host_name(server.host) if server.host not in WILDCARD_BINDS else ""
        # Loopback names and addresses in the set too: the usual Host is one set look-up.
        hosts = {e for e in entries if not e.startswith(".") and e != "*"} | {bound} | LOOPBACK_NAMES | {
            "127.0.0.1", "::1"}
        hosts.discard("")
        origins = {o.lower().rstrip("/") for o in server.cors_origins if o != "*"}
        return cls(frozenset(hosts), tuple(e for e in entries if e.startswith(".")), "*" in entries,
                   server.host in WILDCARD_BINDS, frozenset(origins), "*" in server.cors_origins)

    @property
    def is_cors_on(self) -> bool:
        return self.any_origin or bool(self.origins)

    def check(self, method: str, path: str, headers: Mapping[str, str]) -> BrowserRefusal | None:
        """None when the request may go on (preflights from a listed origin included), else why not."""
        host = headers.get("Host")
        if host is not None and not self.is_allowed_host(host):
            return BrowserRefusal(403, f"Host {host[:200]!r} is not a name this server answers to "
                                       "(a DNS-rebinding guard): add it to [server] allowed_hosts")
        origin = headers.get("Origin")
        if origin is not None and not self._is_same_origin(origin, host) and not self.is_allowed_origin(origin):
            return BrowserRefusal(403, f"requests from pages at {origin[:200]!r} are refused: "
                                       "list the origin in [server] cors_origins to allow it")
        if method.upper() in BODY_METHODS and has_body(headers):
            return _body_type_refusal(path, headers)
        return None

    def is_allowed_host(self, host: str) -> bool:
        verdict = self._verdicts.get(host)
        if verdict is None:
            verdict = self._judge_host(host)
            if len(self._verdicts) < MAX_REMEMBERED_HOSTS:
                self._verdicts[host] = verdict
        return verdict

    def _judge_host(self, host: str) -> bool:
        name = host_name(host)
        if self.any_host or name in self.hosts or is_loopback_name(name):
            return True
        if self.any_ip and _ip(name) is not None:
            return True
        return any(name == domain[1:] or name.endswith(domain) for domain in self.domains)

    def is_allowed_origin(self, origin: str) -> bool:
        return self.any_origin or origin.strip().lower().rstrip("/") in self.origins

    @staticmethod
    def _is_same_origin(origin: str, host: str | None) -> bool:
        parsed = _authority(origin)
        return parsed is not None and host is not None and parsed[1] == _strip_default_port(host)

    def is_preflight(self, method: str, headers: Mapping[str, str]) -> bool:
        """A CORS preflight (to be answered 204 with `preflight_headers` once `check` passed it)."""
        return (method.upper() == "OPTIONS" and headers.get("Origin") is not None
                and headers.get("Access-Control-Request-Method") is not None)

    def preflight_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        answer = self.cors_headers(headers)
        if "Access-Control-Allow-Origin" in answer:
            answer["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            requested = headers.get("Access-Control-Request-Headers", "")[:MAX_REQUESTED_HEADERS]
            answer["Access-Control-Allow-Headers"] = requested or "Authorization, Content-Type"
            answer["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return answer

    def cors_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Headers for any response to this request: Allow-Origin for a listed origin, and Vary:
        Origin whenever CORS is on (answers differ by origin, so caches must keep them apart)."""
        if not self.is_cors_on:
            return {}
        answer = {"Vary": "Origin"}
        origin = headers.get("Origin")
        if origin is not None and self.is_allowed_origin(origin):
            answer["Access-Control-Allow-Origin"] = origin
            answer["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return answer


def _body_type_refusal(path: str, headers: Mapping[str, str]) -> BrowserRefusal | None:
    content_type = headers.get("Content-Type")
    if content_type == "application/json":
        return None
    if content_type is None:
        if not any(headers.get(name) is not None for name in BROWSER_HEADERS):
            return None  # not a browser: tritonclient.http sends its JSON with no type
        shown = "no Content-Type"
    else:
        media = media_type(content_type)
        if is_json_type(media) or media == BINARY_TYPE:
            return None
        shown = f"Content-Type {content_type[:100]!r}"
    return BrowserRefusal(415, f"{path[:200]} takes a JSON body (Content-Type: application/json) or the binary "
                               f"tensor extension ({BINARY_TYPE}), not {shown}")
