"""Where a webhook may be sent: the URL rules and the address policy, in one place.

A webhook URL is refused when it is not http(s), carries credentials, or when its host resolves to
an address that is not a public unicast address: loopback, private (RFC 1918, unique-local),
link-local, carrier-grade NAT, multicast, unspecified, reserved or documentation ranges, and the
cloud metadata endpoints (169.254.169.254, fd00:ec2::254, 100.100.100.200, 168.63.129.16, ...).
IPv4 addresses embedded in IPv6 (mapped, NAT64, 6to4, Teredo) are judged as the IPv4 address.

`AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS` makes exceptions: a host name listed there may resolve anywhere,
an address inside a listed CIDR is allowed. A metadata address is allowed only by its own host
name or by an entry naming exactly that address (a wide CIDR never opens it by accident).

The host is resolved ONCE (`resolve_webhook_target`): every address it resolves to must pass, and
the delivery connects to the checked address (`WebhookTarget.address`) while sending the host name
in `Host` and as the TLS server name, so a DNS answer that changes between the check and the
connection (DNS rebinding) cannot redirect the request.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from orchestrator.webhooks.settings import WebhookSettings, parse_allow_entry

__all__ = [
    "MAX_WEBHOOK_URL_CHARS",
    "WebhookHostUnresolved",
    "WebhookTarget",
    "WebhookTargetRefused",
    "address_refusal",
    "check_webhook_target",
    "resolve_webhook_target",
]

MAX_WEBHOOK_URL_CHARS = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# getaddrinfo's signature: (host, port, family, type, proto, flags) -> [(family, type, proto, canon, sockaddr)]
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

# Instance metadata and platform endpoints of the common clouds.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
        "169.254.169.253",  # AWS VPC DNS
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server (a public address)
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class WebhookTargetRefused(ValueError):
    """The webhook URL is malformed or points at an address the policy refuses; the message says why."""


class WebhookHostUnresolved(WebhookTargetRefused):
    """The webhook URL's host did not resolve (refused at submission; retried at delivery)."""


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL and the one address the delivery connects to."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or address literal, without brackets
    port: int
    address: str  # the checked IP address
    target: str  # path and query, as sent

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def connect_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{address}:{self.port}{self.target}"

    @property
    def server_name(self) -> str | None:
        """The TLS server name (SNI and certificate check): the host name, None for an address literal."""
        if self.scheme != "https" or _literal(self.host) is not None:
            return None
        return self.host


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why the policy refuses `ip` (e.g. "a loopback address"), or None for a public unicast address."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = address_refusal(inner)
            return None if reason is None else f"{reason} (embedded in IPv6)"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT (shared) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "an address that is not globally routable"
    return None


def _allowed(ip: IPAddress, host: str, settings: WebhookSettings) -> bool:
    for entry in settings.allow_hosts:
        rule = parse_allow_entry(entry)
        if isinstance(rule, str):
            if rule == host:
                return True
        elif ip.version == rule.version and ip in rule and (ip not in METADATA_ADDRESSES or rule.num_addresses == 1):
            return True
    return False


def _parse(url: str) -> tuple[str, str, int, str]:
    if not isinstance(url, str) or not url:
        raise WebhookTargetRefused("webhook_url is empty: expected an http:// or https:// URL")
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise WebhookTargetRefused(f"webhook_url has {len(url)} characters: at most {MAX_WEBHOOK_URL_CHARS} allowed")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise WebhookTargetRefused("webhook_url contains whitespace or control characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise WebhookTargetRefused(f"webhook_url {url!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise WebhookTargetRefused(f"webhook_url {url!r} is refused: expected an http:// or https:// URL")
    if parsed.userinfo:
        raise WebhookTargetRefused(
            "webhook_url must not carry credentials (user:password@): deliveries are signed instead"
        )
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    if not host:
        raise WebhookTargetRefused(f"webhook_url {url!r} has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise WebhookTargetRefused(f"webhook_url port {port} is invalid: expected 1-65535")
    target = parsed.raw_path.decode("ascii") or "/"
    return parsed.scheme, host, port, target


def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = resolver(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP, 0)
    except (OSError, UnicodeError) as exc:
        raise WebhookHostUnresolved(f"webhook_url host {host!r} does not resolve: {exc}") from None
    addresses: list[IPAddress] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        ip = ipaddress.ip_address(text)
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise WebhookHostUnresolved(f"webhook_url host {host!r} resolves to no address")
    return addresses


def resolve_webhook_target(
    url: str, settings: WebhookSettings | None = None, *, resolver: Resolver = socket.getaddrinfo
) -> WebhookTarget:
    """Check `url` and resolve its host once: the target to connect to, or `WebhookTargetRefused`
    (`WebhookHostUnresolved` when the name does not resolve) with a message saying why."""
    settings = settings or WebhookSettings.from_env()
    scheme, host, port, target = _parse(url)
    addresses = _resolve(host, port, resolver)
    for ip in addresses:
        reason = address_refusal(ip)
        if reason is not None and not _allowed(ip, host, settings):
            via = "" if _literal(host) is not None else f" (host {host!r} resolves to it)"
            raise WebhookTargetRefused(
                f"webhook_url is refused: {ip} is {reason}{via}; deliveries go to public addresses only, "
                "unless the deployment lists the host or a network in AUDIO_OMNI_WEBHOOK_ALLOW_HOSTS"
            )
    return WebhookTarget(url=url, scheme=scheme, host=host, port=port, address=str(addresses[0]), target=target)


def check_webhook_target(url: str, settings: WebhookSettings | None = None) -> None:
    """Return if webhooks may be sent to `url`; raise `WebhookTargetRefused` saying why not.

    Called at submission (the API answers 422 `webhook_url_refused`); the dispatcher checks again,
    with a fresh resolution, before each attempt."""
    resolve_webhook_target(url, settings)
