"""Server addresses as users write them: ``"host:port"``, ``"host"``, ``"[v6]:port"``,
``"[v6]"``, a bare IPv6 address such as ``"::1"`` or ``(host, port)``, and lists or
name -> address mappings of them (a Cluster's servers, a ReplicationStream's masters).
:func:`format_address` writes one back so that it parses again (IPv6 in brackets).
Cheap to import: no ring, no sockets."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from .errors import ArgumentError

__all__ = ["Address", "Servers", "DEFAULT_PORT", "parse_address", "format_address", "named_addresses"]

#: KT's default port, used for an address given without one.
DEFAULT_PORT = 1978

Address = str | tuple[str, int]
Servers = Sequence[Address] | Mapping[str, Address]


def parse_address(address: Address) -> tuple[str, int]:
    """``"host:port"``, ``"host"``, ``"[v6]:port"``, ``"[v6]"``, a bare IPv6 address or
    ``(host, port)`` -> ``(host, port)``; the port defaults to :data:`DEFAULT_PORT`.

    A string with more than one colon and no brackets is an IPv6 address without a
    port (``"::1"``); anything else with several colons is an ArgumentError (write
    ``"[v6]:port"`` to give a port)."""
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
    elif isinstance(address, str) and address:
        host, port_text = _split(address)
        if not (port_text.isascii() and port_text.isdigit()):
            raise ArgumentError(f"bad port in address {address!r}")
        port = int(port_text)
    else:
        raise ArgumentError(f"an address is 'host:port' or (host, port), not {address!r}")
    if not isinstance(host, str) or not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ArgumentError(f"bad address {address!r}")
    return host, port


def _split(address: str) -> tuple[str, str]:
    """(host, port text) of an address string."""
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            raise ArgumentError(f"bad address {address!r}: a bracketed host is '[v6]' or '[v6]:port'")
        return host, rest[1:] if rest else str(DEFAULT_PORT)
    if address.count(":") > 1:
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise ArgumentError(f"bad address {address!r}: write an IPv6 address with a port as "
                                "'[v6]:port'") from None
        return address, str(DEFAULT_PORT)
    host, sep, port_text = address.partition(":")
    return host, port_text if sep else str(DEFAULT_PORT)


def format_address(host: str, port: int) -> str:
    """``"host:port"``, with an IPv6 host in brackets (``"[::1]:1978"``): what
    :func:`parse_address` reads back as ``(host, port)``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def named_addresses(servers: Servers, what: str = "server") -> list[tuple[str, str, int]]:
    """``(name, host, port)`` for each of ``servers``: a list of addresses (each named
    ``"host:port"``, as libketama clients name servers, ``"[v6]:port"`` for IPv6) or a mapping of names to addresses
    (names, not addresses, are what a ring hashes).  A bare string, no address at all or a
    name given twice is an ArgumentError; ``what`` names the servers in its message."""
    if isinstance(servers, (str, bytes)) or not isinstance(servers, Iterable):
        raise ArgumentError(f"{what}s must be a list of addresses or a mapping of name -> address")
    if isinstance(servers, Mapping):
        named = [(name, *parse_address(addr)) for name, addr in servers.items()]
    else:
        named = [(format_address(host, port), host, port) for host, port in map(parse_address, servers)]
    if not named:
        raise ArgumentError(f"at least one {what} is needed")
    names = [name for name, _, _ in named]
    if len(set(names)) != len(names):
        raise ArgumentError(f"duplicate {what} names: {names}")
    return named
