"""Which network addresses the gateway may be steered to by someone else.

Upstreams answer with image links the gateway downloads, and callers send image URLs the
gateway hands on. Neither may point the gateway at its own network: loopback, private
ranges, link-local (cloud metadata lives at 169.254.169.254), multicast, reserved and
unspecified addresses, in IPv4 or any IPv6 spelling of them.

Two layers, because a URL's host may be a name:

- `UrlPolicy.check_url` reads a URL before anything connects: http(s) only, no user info
  or characters URL parsers disagree on, and a host that is not an internal IP literal
  (in any form `inet_aton` accepts, such as `2130706433` or `0x7f.1`) or an internal name.
- `GuardedResolver` is the DNS resolver of the download client: a name is resolved once,
  refused addresses are dropped, and the connection goes to an address that was checked.
  A name that resolves to a public address for a check and to a private one for the
  connection (DNS rebinding) therefore gets nowhere.

The hosts of the configured upstreams' base URLs are trusted as they are: the operator
chose them, and the gateway already sends its tokens there.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Names that only mean something inside a network, whatever they resolve to.
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".lan", ".intranet")
# inet_aton's legacy spellings: decimal, octal or hex parts, 1 to 4 of them.
_LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}\.?", re.I)
# Characters on which URL parsers are known to disagree about where the host ends.
_AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f]")
# What a host (a name, in any script, or an IP address) never holds.
_NOT_IN_HOSTS = re.compile(r"[^\w.\-~:]")
# NAT64 (RFC 6052) embeds an IPv4 address in the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class RefusedUrl(ValueError):
    """A URL the gateway will not fetch or forward; the message says why."""


class BlockedAddress(OSError):
    """Raised by the resolver when a name resolves only to refused addresses.

    An OSError, because that is what the HTTP client expects a resolver to raise: it
    surfaces as a connection error whose cause is this exception.
    """


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, compatible, 6to4, Teredo, NAT64)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.packed[:12] == bytes(12):  # IPv4-compatible ::a.b.c.d (and :: and ::1)
        found.append(ipaddress.IPv4Address(ip.packed[12:]))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(ip.packed[12:]))
    return found


def is_public(ip: IPAddress) -> bool:
    """True for an address on the public internet: not loopback, private, link-local,
    multicast, reserved, unspecified or shared (CGNAT), nor an IPv6 form of one."""
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        return all(is_public(v4) for v4 in _embedded_ipv4(ip))
    return True


def parse_ip(host: str) -> IPAddress | None:
    """The address a URL host spells, including inet_aton's legacy forms; None for names."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class UrlPolicy:
    """Where the gateway may connect when a URL comes from a caller or an upstream."""

    # True: no address checks at all (a gateway whose upstreams and image hosts are all
    # on a private network).
    allow_private: bool = False
    # Private ranges allowed anyway, e.g. an internal image CDN.
    allowed_networks: tuple[IPNetwork, ...] = ()
    # (host, port) of the configured upstreams: trusted as configured.
    trusted_origins: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def build(
        cls,
        *,
        allow_private: bool = False,
        allowed_networks: Iterable[str] = (),
        trusted_urls: Iterable[str] = (),
    ) -> UrlPolicy:
        """A policy from configuration values (CIDR strings, upstream base URLs)."""
        origins = set()
        for url in trusted_urls:
            try:
                parsed = httpx.URL(url)
            except httpx.InvalidURL:
                continue
            if parsed.scheme in _DEFAULT_PORTS and parsed.host:
                origins.add((parsed.host.lower(), parsed.port or _DEFAULT_PORTS[parsed.scheme]))
        return cls(
            allow_private=allow_private,
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks),
            trusted_origins=frozenset(origins),
        )

    def address_allowed(self, ip: IPAddress) -> bool:
        """May the gateway connect to this address?"""
        if self.allow_private or is_public(ip):
            return True
        return any(ip.version == net.version and ip in net for net in self.allowed_networks)

    def origin_trusted(self, host: str, port: int) -> bool:
        """Is (host, port) one of the configured upstreams?"""
        return (host.lower().strip("[]"), port) in self.trusted_origins

    def check_url(self, url: str, *, names: bool = True) -> str:
        """The URL, normalised, if the gateway may fetch or forward it; else RefusedUrl.

        Only looks at the URL. With `names`, host names that only exist inside a network
        (localhost, *.internal, single labels) are refused too: for URLs handed on to an
        upstream that is all the gateway can judge. The downloader passes names=False,
        because its resolver judges every name by the addresses it resolves to.
        """
        parsed, host = _parse(url)
        port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        if self.origin_trusted(host, port):
            return str(parsed)
        ip = parse_ip(host)
        if ip is not None:
            if not self.address_allowed(ip):
                raise RefusedUrl(f"{host} is a private, loopback or otherwise internal address")
        elif (
            names
            and not self.allow_private
            and (host == "localhost" or host.endswith(_INTERNAL_SUFFIXES) or "." not in host)
        ):
            raise RefusedUrl(f"{host} is an internal host name")
        return str(parsed)


def _parse(url: str) -> tuple[httpx.URL, str]:
    """The URL and its host (lower case, without a trailing dot), if it reads as an http(s)
    URL with nothing on which parsers disagree; else RefusedUrl."""
    if _AMBIGUOUS.search(url):
        raise RefusedUrl("the URL contains spaces, backslashes or control characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise RefusedUrl("the URL cannot be parsed") from None
    if parsed.scheme not in _DEFAULT_PORTS:
        raise RefusedUrl("only http and https URLs are allowed")
    if parsed.userinfo:
        raise RefusedUrl("URLs with a user name or password are not allowed")
    host = parsed.host.lower().rstrip(".")
    if not host:
        raise RefusedUrl("the URL has no host")
    if _NOT_IN_HOSTS.search(host):
        # Percent-escapes and punctuation are no part of a real host name, and parsers
        # normalise them differently: what is checked must be what is connected to.
        raise RefusedUrl("the URL's host is not a valid host name")
    return parsed, host


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that only hands out addresses the policy allows."""

    def __init__(self, policy: UrlPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve, then drop every address the gateway may not connect to."""
        infos = await self._inner.resolve(host, port, family)
        if self._policy.origin_trusted(host, port):
            return infos
        allowed = [i for i in infos if _allowed(self._policy, i)]
        if not allowed:
            raise BlockedAddress(
                f"{host} resolves only to private, loopback or otherwise internal addresses"
            )
        return allowed

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()


def _allowed(policy: UrlPolicy, info: Any) -> bool:
    try:
        ip = ipaddress.ip_address(str(info["host"]).split("%", 1)[0])
    except ValueError:
        return False
    return policy.address_allowed(ip)


def refused_cause(exc: BaseException) -> BlockedAddress | None:
    """The BlockedAddress behind a client error, if the resolver refused the host."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BlockedAddress):
            return current
        seen.add(id(current))
        nested = getattr(current, "os_error", None)  # aiohttp keeps the resolver's error here
        if isinstance(nested, BlockedAddress):
            return nested
        current = current.__cause__ or current.__context__
    return None
