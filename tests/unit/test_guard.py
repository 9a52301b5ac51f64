"""The fetcher's address and URL policy (pure: addresses are values here, nothing is dialled)."""
import ipaddress

import pytest

from services.common.errors import ErrorCode, PermanentError
from services.fetcher.guard import is_forbidden, literal_address, validate_url

FORBIDDEN = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "private 10/8"),
    ("10.255.255.255", "private 10/8 top"),
    ("172.16.0.1", "private 172.16/12"),
    ("172.31.255.254", "private 172.16/12 top"),
    ("192.168.1.1", "private 192.168/16"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT top"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback top"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.0.1", "link-local"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.0.2.1", "TEST-NET-1"),
    ("198.51.100.7", "TEST-NET-2"),
    ("203.0.113.9", "TEST-NET-3"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.254", "benchmarking top"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast SSDP"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv6 outside global unicast
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fc00::1", "ULA fc00::/8"),
    ("fd12:3456:789a::1", "ULA fd00::/8"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local with zone"),
    ("febf::1", "link-local top"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("100::1", "discard-only"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation (RFC 9637)"),
    ("2001:2::1", "benchmarking"),
    # IPv6 forms that deliver to an IPv4 address
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::10.0.0.1", "IPv4-compatible private"),
    ("2002:7f00:1::", "6to4 of 127.0.0.1"),
    ("2002:a9fe:a9fe::1", "6to4 of 169.254.169.254"),
    ("2002:c0a8:101::1", "6to4 of 192.168.1.1"),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
    ("64:ff9b::a00:1", "NAT64 of 10.0.0.1"),
    ("64:ff9b:1::5db8:d822", "local-use NAT64 prefix, refused as a whole"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo, refused as a whole"),
    ("2001::1", "Teredo prefix"),
    ("2606:4700::5efe:a00:1", "ISATAP tunnelling to 10.0.0.1"),
    ("fe80::5efe:5db8:d822", "ISATAP on a link-local prefix"),
]

PUBLIC = [
    ("93.184.216.34", "public IPv4"),
    ("8.8.8.8", "public resolver"),
    ("1.1.1.1", "public resolver"),
    ("172.32.0.1", "just above 172.16/12"),
    ("100.128.0.1", "just above CGNAT"),
    ("169.255.0.1", "just above link-local"),
    ("2606:4700::1", "public IPv6"),
    ("2a00:1450:4001::200e", "public IPv6"),
    ("::ffff:93.184.216.34", "IPv4-mapped public"),
    ("2002:5db8:d822::1", "6to4 of a public address"),
    ("64:ff9b::5db8:d822", "NAT64 of a public address"),
    ("2606:4700::5efe:5db8:d822", "ISATAP to a public address"),
]


@pytest.mark.parametrize(("address", "why"), FORBIDDEN)
def test_forbidden_addresses(address: str, why: str) -> None:
    assert is_forbidden(ipaddress.ip_address(address)), why


@pytest.mark.parametrize(("address", "why"), PUBLIC)
def test_public_addresses(address: str, why: str) -> None:
    assert not is_forbidden(ipaddress.ip_address(address)), why


def test_allow_list_opens_only_its_networks() -> None:
    allow = (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("fd00::/64"))
    assert not is_forbidden(ipaddress.ip_address("127.0.0.2"), allow)
    assert is_forbidden(ipaddress.ip_address("127.0.0.1"), allow)
    assert not is_forbidden(ipaddress.ip_address("fd00::2"), allow)
    assert is_forbidden(ipaddress.ip_address("fd00:0:0:1::2"), allow)
    assert is_forbidden(ipaddress.ip_address("169.254.169.254"), allow)


def test_allow_list_applies_to_the_embedded_ipv4() -> None:
    allow = (ipaddress.ip_network("127.0.0.2/32"),)
    assert not is_forbidden(ipaddress.ip_address("::ffff:127.0.0.2"), allow)
    assert is_forbidden(ipaddress.ip_address("::ffff:127.0.0.1"), allow)


ODD_SPELLINGS = [
    ("2130706433", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0x7F.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.0.0.01", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("169.254.43518", "169.254.169.254"),
    ("012.0.0.1", "10.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("0x7f.1.", "127.0.0.1"),
]


@pytest.mark.parametrize(("host", "meant"), ODD_SPELLINGS)
def test_odd_ipv4_spellings_mean_what_the_resolver_reads(host: str, meant: str) -> None:
    assert literal_address(host) == ipaddress.ip_address(meant)
    url = validate_url(f"http://{host}:8080/a.jpg")
    assert url.host == meant
    assert url.port == 8080
    assert is_forbidden(ipaddress.ip_address(url.host))


@pytest.mark.parametrize("host", ["example.com", "example.com.", "cafe.be", "beef", "1.2.3.4.5", "08.0.0.1", "4294967296", "."])
def test_names_are_not_read_as_addresses(host: str) -> None:
    assert literal_address(host) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/a.jpg", "http://example.com/a.jpg"),
        ("https://example.com/a.jpg", "https://example.com/a.jpg"),
        ("HTTP://Example.COM/a.jpg", "http://example.com/a.jpg"),
        ("HtTpS://example.com:8443/a.jpg?x=1", "https://example.com:8443/a.jpg?x=1"),
        ("http://example.com/a.jpg#frag", "http://example.com/a.jpg"),
        ("http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/"),
        ("http://93.184.216.34/a.png", "http://93.184.216.34/a.png"),
    ],
)
def test_valid_urls(url: str, expected: str) -> None:
    assert str(validate_url(url)) == expected


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "ftp://example.com/a.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "s3://bucket/key",
        "//example.com/a.jpg",
        "/a.jpg",
        "http://",
        "http:///a.jpg",
        "http://user:secret@example.com/a.jpg",
        "http://user@example.com/a.jpg",
        "http://example.com:@evil.test/a.jpg",
        "http://%31%32%37.0.0.1/",
        "http://ex ample.com/",
        "http://[::1/",
        "http://example.com/" + "a" * 2040,
    ],
)
def test_invalid_urls(url: str) -> None:
    with pytest.raises(PermanentError) as caught:
        validate_url(url)
    assert caught.value.code is ErrorCode.INVALID_REQUEST


def test_length_limit_is_2048() -> None:
    base = "http://example.com/"
    assert validate_url(base + "a" * (2048 - len(base)))
    with pytest.raises(PermanentError):
        validate_url(base + "a" * (2049 - len(base)))
