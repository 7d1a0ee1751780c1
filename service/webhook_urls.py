"""Where a webhook may point: an http(s) URL whose host resolves only to global addresses.

A receiver URL is a request the service makes on a tenant's behalf from inside the deployment, so a URL that
resolves to loopback, a private network, link-local (cloud metadata at 169.254.169.254), or any other non-global
range would let a tenant probe the operator's network. Those are refused unless the operator allows them
(`webhook_allow_private`, for a receiver on the same host or network). The check runs at registration and again at
every delivery, since DNS can change in between, and the delivery then connects to the very address it checked, so
that a second lookup cannot answer differently (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.errors import InvalidRequest

MAX_URL_LENGTH = 2000
DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeUrl(InvalidRequest):
    """The URL is malformed, does not resolve, or resolves to an address the settings do not allow."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="url", code="invalid_webhook_url")


@dataclass(frozen=True)
class Target:
    """A checked receiver: connect to `address`, while speaking to `host` (Host header, TLS name)."""

    scheme: str
    host: str
    port: int
    address: str
    path: str  # path and query string, as sent in the request line


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an absolute http(s) URL without credentials; UnsafeUrl otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"url: at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeUrl(f"url: not a valid URL ({e})") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise UnsafeUrl("url: must be an absolute http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("url: must not carry credentials; verify deliveries with the signing secret instead")
    if parts.fragment:
        raise UnsafeUrl("url: must not have a #fragment")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UnsafeUrl("url: must not contain whitespace or control characters")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme], path


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback, whatever the IPv6 flags say
    return ip.is_global and not ip.is_multicast


def resolve(url: str, *, allow_private: bool) -> Target:
    """Check `url` and pick the address to connect to; every address the host resolves to must be allowed, so that
    a name listing one public and one private address cannot be used to reach the private one."""
    scheme, host, port, path = parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise UnsafeUrl(f"url: the host {host!r} does not resolve ({e})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeUrl(f"url: the host {host!r} does not resolve")
    refused = [a for a in addresses if not is_public(a)]
    if refused and not allow_private:
        raise UnsafeUrl(f"url: {host!r} resolves to {refused[0]}, a loopback, private, link-local or otherwise "
                        "non-global address; webhooks go to public addresses only (the operator setting "
                        "DRLORA_WEBHOOK_ALLOW_PRIVATE allows others)")
    return Target(scheme=scheme, host=host, port=port, address=addresses[0], path=path)
