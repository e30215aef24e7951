"""SSRF guard shared by downloads, uploads and webhooks.

Two layers, because checking a URL and then letting the HTTP client resolve the name again would let
DNS change the answer in between (rebinding):
1. ``check_url`` validates the scheme and resolves the host up front, for early, clear errors;
2. ``GuardedTransport`` resolves again at connect time, checks every address, and connects to the
   checked IP itself (TLS still verifies the original host name).
Redirects are never followed by the client; callers follow them and every hop goes through both.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import typing
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx

from lipsync.api.watch import TransferWatch, WatchedStream
from lipsync.errors import FetchError, UnsafeURL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata endpoints. Refused even when private URLs are allowed: nothing this service
# legitimately downloads lives there, and credentials do.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
METADATA_HOSTNAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data"})
ALLOWED_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 8192


def redact(url: str) -> str:
    """The URL without query and credentials: presigned URLs carry secrets that must not reach logs."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use prefixes (/48 to /96)
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 IPv4-translated
_COMPATIBLE = ipaddress.ip_network("::/96")  # RFC 4291 IPv4-compatible (deprecated, still routed by some)


def _v4(value: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(value & 0xFFFFFFFF)


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address may lead to: a translator (NAT64, SIIT), a tunnel (6to4,
    Teredo) or the kernel itself (mapped, compatible) turns these into IPv4 connections, so the IPv4
    address is what must be classified."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    n = int(ip)
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _SIIT or ip in _NAT64:
        found.append(_v4(n))
    if ip in _COMPATIBLE and n > 1:  # :: and ::1 are the unspecified and loopback addresses themselves
        found.append(_v4(n))
    if ip in _NAT64_LOCAL:
        # The prefix length is the operator's choice; RFC 6052 puts the IPv4 address at bits 96-127 for
        # a /96 and at bits 48-63 + 72-87 (skipping the 'u' octet) for a /48. Check both.
        for v4 in (_v4(n), _v4((((n >> 64) & 0xFFFF) << 16) | ((n >> 40) & 0xFFFF))):
            if not v4.is_unspecified:  # the zeros of the other interpretation
                found.append(v4)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client); Python undoes the client's obfuscation
    return found


def _problem_of(ip: IPAddress, *, allow_private: bool) -> str | None:
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if allow_private:
        if ip.is_multicast or ip.is_unspecified:
            return "not a unicast address"
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def address_problem(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why connecting to ``ip`` is refused, or None when it is fine. An IPv6 address that embeds an IPv4
    one is judged by the IPv4 address (any refused candidate refuses it): a NAT64 address of a public
    host is public, one of the metadata address is the metadata address."""
    embedded = embedded_ipv4(ip)
    for v4 in embedded:
        problem = _problem_of(v4, allow_private=allow_private)
        if problem:
            return f"{problem} ({v4}, embedded in the IPv6 address)"
    if embedded and isinstance(ip, ipaddress.IPv6Address) and (ip in _NAT64 or ip.ipv4_mapped is not None):
        return None  # the translation is the destination; the IPv6 form itself is not private
    return _problem_of(ip, allow_private=allow_private)


def _is_metadata(problem: str) -> bool:
    return problem.startswith("a cloud metadata address")


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}") from None
    out: list[IPAddress] = []
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if addr not in out:
            out.append(addr)
    return out


def checked_addresses(host: str, port: int, *, allow_private: bool, field: str | None = None) -> list[IPAddress]:
    """Resolve ``host`` and refuse it when ANY address is refused (mixed answers are a rebinding trick)."""
    name = host.strip("[]").rstrip(".").lower()
    if name in METADATA_HOSTNAMES:
        raise UnsafeURL(f"{field or 'url'}: {host} is a cloud metadata host; refused", field=field)
    addresses = resolve(name, port)
    if not addresses:
        raise FetchError(f"{field or 'url'}: host {host!r} has no address", field=field)
    for ip in addresses:
        problem = address_problem(ip, allow_private=allow_private)
        if problem:
            # LIPSYNC_ALLOW_PRIVATE_URLS does not allow metadata addresses: never suggest it for one.
            hint = ("" if allow_private or _is_metadata(problem)
                    else " (set LIPSYNC_ALLOW_PRIVATE_URLS=true to allow private networks)")
            raise UnsafeURL(f"{field or 'url'}: {host} resolves to {ip}, {problem}; refused{hint}", field=field)
    return addresses


def check_url_syntax(url: str, *, field: str | None = None) -> httpx.URL:
    label = field or "url"
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"{label}: URL longer than {MAX_URL_LENGTH} characters", field=field)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeURL(f"{label}: not a valid URL ({exc})", field=field) from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise UnsafeURL(f"{label}: scheme {parsed.scheme or '(none)'!r} is not allowed; use http or https",
                        field=field)
    if not parsed.host:
        raise UnsafeURL(f"{label}: URL has no host", field=field)
    return parsed


def check_url(url: str, *, allow_private: bool, field: str | None = None) -> httpx.URL:
    """Scheme + resolution check, raising UnsafeURL/FetchError with the offending field named."""
    parsed = check_url_syntax(url, field=field)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    checked_addresses(parsed.host, port, allow_private=allow_private, field=field)
    return parsed


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves, checks, then connects to the checked IP: what was checked is what is connected to."""

    def __init__(self, allow_private: bool, watch: TransferWatch | None = None) -> None:
        self.allow_private = allow_private
        self.watch = watch
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = checked_addresses(host, port, allow_private=self.allow_private)
        except (UnsafeURL, FetchError) as exc:
            # httpcore only maps its own exceptions; ConnectError surfaces as httpx.ConnectError and the
            # callers re-run check_url to get the precise reason.
            raise httpcore.ConnectError(exc.message) from None
        last: Exception | None = None
        for ip in addresses:
            if self.watch is not None:
                self.watch.check()
                timeout = self.watch.cap(timeout)
            try:
                stream = self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
                continue
            except httpcore.ConnectTimeout:
                if self.watch is not None:
                    self.watch.check()  # the deadline, when that is what cut the connect short
                raise
            return stream if self.watch is None else WatchedStream(stream, self.watch)
        raise last or httpcore.ConnectError(f"cannot connect to {host}")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
        raise httpcore.ConnectError("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:  # pragma: no cover
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx transport whose every connection goes through the SSRF check. No proxies from the
    environment (a proxy would hide the real destination from the check)."""

    def __init__(self, *, allow_private: bool, ssl_context: ssl.SSLContext | None = None,
                 watch: TransferWatch | None = None) -> None:
        ctx = ssl_context or httpx.create_ssl_context()
        super().__init__(verify=ctx, trust_env=False)
        # httpx exposes no network-backend argument; the pool it builds is replaced with an identical
        # one using our backend (the pool attribute has been stable across httpx 0.2x).
        self._pool = httpcore.ConnectionPool(ssl_context=ctx,
                                             network_backend=_GuardedBackend(allow_private, watch))


def guarded_client(*, allow_private: bool, timeout: httpx.Timeout, ssl_context: ssl.SSLContext | None = None,
                   watch: TransferWatch | None = None) -> httpx.Client:
    """A client for one transfer. Pass a shared ``ssl_context``: loading the CA bundle costs ~30 ms.
    With a ``watch``, every connection holds its deadline and cancellation whatever the peer's pace."""
    return httpx.Client(
        transport=GuardedTransport(allow_private=allow_private, ssl_context=ssl_context, watch=watch),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "lipsync"},
    )
