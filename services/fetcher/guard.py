"""Which source URLs and addresses the fetcher may reach: a pure policy, no I/O."""
from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

from yarl import URL

from services.common.errors import ErrorCode, PermanentError
from services.common.urls import SCHEMES

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
# Letters, digits, hyphen, underscore, dot: what DNS names (after IDNA) and dotted IPv4 use. Anything else
# (`%`, spaces, zone ids) is refused rather than left to each resolver's idea of what it means.
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


FORBIDDEN_V4 = _nets(
    "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches local services on Linux (CVE-2025-24354)
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private
    "100.64.0.0/10",  # CGNAT, often the provider's own infrastructure
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, includes cloud metadata 169.254.169.254
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",  # documentation
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
)
# Only 2000::/3 is handed out as global unicast; everything outside it (::, ::1, ULA fc00::/7,
# link-local fe80::/10, site-local fec0::/10, multicast ff00::/8, discard 100::/64...) is refused,
# except the prefixes below that embed an IPv4 address, which are judged by that address.
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
FORBIDDEN_V6 = _nets(
    "2001::/32",  # Teredo: tunnels to an obfuscated IPv4 through a relay; refused as a whole
    "2001:2::/48",  # benchmarking
    "2001:db8::/32", "3fff::/20",  # documentation
)
# Local-use NAT64 (RFC 8215) may embed the IPv4 at several offsets, so no single decoding is safe.
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that packets to a translating or tunnelling IPv6 form are delivered to."""
    if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d
        return address.ipv4_mapped
    if address.sixtofour is not None:  # 2002:aabb:ccdd::/48
        return address.sixtofour
    if address in NAT64_WELL_KNOWN or address in IPV4_COMPATIBLE:  # 64:ff9b::a.b.c.d, ::a.b.c.d
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def isatap_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 tunnel end point in an ISATAP interface id (`::0:5efe:a.b.c.d` or `::200:5efe:a.b.c.d`)."""
    if (int(address) >> 32) & 0xFDFF_FFFF == 0x5EFE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_forbidden(address: Address, allow: Iterable[Network] = ()) -> bool:
    """True if the fetcher must not connect to `address`; networks in `allow` are always permitted."""
    allow = tuple(allow)
    if any(address in network for network in allow):
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return any(address in network for network in FORBIDDEN_V4)
    address = ipaddress.IPv6Address(int(address))  # drop a %zone: the policy is about the address
    if address in NAT64_LOCAL or any(address in network for network in FORBIDDEN_V6):
        return True
    embedded = embedded_ipv4(address)
    if embedded is not None:  # the packet ends up at that IPv4 address, so it alone decides
        return is_forbidden(embedded, allow)
    if address not in GLOBAL_UNICAST_V6:
        return True
    # An ISATAP address is routed by its IPv6 prefix but tunnels to the IPv4 in it: both must pass.
    tunnel = isatap_ipv4(address)
    return tunnel is not None and is_forbidden(tunnel, allow)


def literal_address(host: str) -> Address | None:
    """The address an IP-literal host means, reading IPv4 the way the C resolver does.

    `inet_aton` is what getaddrinfo uses for numeric hosts, so decimal `2130706433`, octal
    `0177.0.0.1`, hex `0x7f.1` and short `127.1` all come out as the 127.0.0.1 they reach.
    A trailing dot is dropped first, as browsers do: `0x7f.1.` must not reach DNS as a "name".
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host.removesuffix(".")))
    except OSError:
        return None


def validate_url(url: str, what: str = "source URL") -> URL:
    """Parse a source (or callback) URL, refusing what is never fetchable; IP-literal hosts come back canonical.

    URLs with credentials are refused rather than stripped: a URL like `http://cdn.example@evil/`
    is a classic way to make a reviewer misread the host, and we never want to send secrets onward.
    """
    if len(url) > MAX_URL_LENGTH:
        raise PermanentError(ErrorCode.INVALID_REQUEST, f"{what} is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise PermanentError(ErrorCode.INVALID_REQUEST, f"{what} cannot be parsed: {exc}") from None
    if parsed.scheme.lower() not in SCHEMES:
        raise PermanentError(ErrorCode.INVALID_REQUEST, f"{what} must be http or https")
    host = parsed.raw_host
    if not host:
        raise PermanentError(ErrorCode.INVALID_REQUEST, f"{what} has no host")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise PermanentError(ErrorCode.INVALID_REQUEST, f"{what} must not carry credentials")
    address = literal_address(host)
    if address is None and not _HOSTNAME.fullmatch(host):
        raise PermanentError(ErrorCode.INVALID_REQUEST, f"{what} host is not a valid name or address")
    if address is not None:
        parsed = parsed.with_host(str(address))
    return parsed.with_fragment(None)
