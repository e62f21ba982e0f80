"""SSRF guard for URLs the fleet calls on a tenant's behalf (webhooks, later connectors).

A tenant-supplied URL must not reach the machine's own services, the cloud metadata endpoint
or the private network. ``check_outbound_url`` resolves the host and refuses any address in a
non-public range unless the host name, the address or a CIDR containing it is allow-listed by
the operator. Call it when the URL is accepted; right before each call use
``pin_outbound_url``, which checks again and gives the address to connect to: a DNS name can
resolve to a public address at registration and to 127.0.0.1 later (DNS rebinding), even
between a check and the connection that follows it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from shared.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Ranges Python's ipaddress flags do not name on their own (or names only as "not global").
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_AWS_IPV6_METADATA = ipaddress.ip_address("fd00:ec2::254")
_METADATA_V4 = ipaddress.ip_network("169.254.0.0/16")


def resolve_host(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def blocked_reason(ip: IPAddress) -> str | None:
    """Why an address is not a public destination, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return blocked_reason(ip.ipv4_mapped)  # ::ffff:127.0.0.1 is loopback too
    if ip == _AWS_IPV6_METADATA or (isinstance(ip, ipaddress.IPv4Address) and ip in _METADATA_V4):
        return "link-local/metadata"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("CGNAT", isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    )
    for name, hit in checks:
        if hit:
            return name
    return None if ip.is_global else "non-global"


def _allowed(host: str, ip: IPAddress | None, allow: Sequence[str]) -> bool:
    for entry in allow:
        entry = entry.strip().lower()
        if not entry:
            continue
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if entry == host:
                return True
            continue
        if ip is not None and ip.version == net.version and ip in net:
            return True
    return False


@dataclass(frozen=True)
class PinnedUrl:
    """A checked URL and the address to connect to, so the call reaches what was checked.

    ``connect_url`` has the host replaced by the checked address; send ``headers`` (the
    original ``Host``) and ``extensions`` (for https the original name as the TLS server name,
    httpx's ``sni_hostname``: the certificate is verified against it). When the operator
    allow-listed the host name itself, the name is trusted as it resolves: ``address`` is None
    and the URL is called as given.
    """

    url: str
    connect_url: str
    address: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)


def check_outbound_url(
    url: str,
    allow: Sequence[str],
    *,
    param: str = "url",
    resolver: Resolver = resolve_host,
) -> None:
    """Raise InvalidRequest (naming ``param``) unless ``url`` may be called from inside.

    ``allow`` holds host names, addresses or CIDRs (``receiver.internal``, ``10.0.0.0/8``).
    Every address the host resolves to must be public or allow-listed: one private answer
    among public ones is enough to refuse (the client may connect to any of them).
    """
    pin_outbound_url(url, allow, param=param, resolver=resolver)


def pin_outbound_url(
    url: str,
    allow: Sequence[str],
    *,
    param: str = "url",
    resolver: Resolver = resolve_host,
) -> PinnedUrl:
    """``check_outbound_url`` that also says which address to connect to.

    Resolving once and connecting to that address closes the window between the check and
    the connection in which a DNS answer can change (rebinding with a short TTL).
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidRequest(f"{param} is not a valid URL: {exc}", param=param) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{param} must be an http(s) URL with a host", param=param)
    host = parts.hostname.lower().rstrip(".")
    if _allowed(host, None, allow):
        return PinnedUrl(url=url, connect_url=url)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolver(host, port)]
        except (OSError, UnicodeError) as exc:
            raise InvalidRequest(
                f"{param} host {host!r} does not resolve ({type(exc).__name__})",
                param=param,
                code="url_unresolvable",
            ) from None
        if not addresses:
            raise InvalidRequest(
                f"{param} host {host!r} does not resolve", param=param, code="url_unresolvable"
            )
    for ip in addresses:
        reason = blocked_reason(ip)
        if reason and not _allowed(host, ip, allow):
            raise InvalidRequest(
                f"{param} host {host!r} resolves to a {reason} address ({ip}); outbound calls "
                "there are refused unless the operator allow-lists it",
                param=param,
                code="url_not_allowed",
            )
    ip = addresses[0]
    userinfo, _, hostport = parts.netloc.rpartition("@")
    literal_host = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = (userinfo + "@" if userinfo else "") + literal_host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return PinnedUrl(
        url=url,
        connect_url=urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
        address=str(ip),
        headers={"Host": hostport},
        extensions={"sni_hostname": host} if parts.scheme == "https" else {},
    )
