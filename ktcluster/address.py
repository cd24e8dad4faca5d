"""Server addresses as users write them: ``"host:port"``, ``"host"``, ``"[v6]:port"`` or
``(host, port)``, and lists or name -> address mappings of them (a Cluster's servers, a
ReplicationStream's masters).  Cheap to import: no ring, no sockets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .errors import ArgumentError

__all__ = ["Address", "Servers", "DEFAULT_PORT", "parse_address", "named_addresses"]

#: KT's default port, used for an address given without one.
DEFAULT_PORT = 1978

Address = str | tuple[str, int]
Servers = Sequence[Address] | Mapping[str, Address]


def parse_address(address: Address) -> tuple[str, int]:
    """``"host:port"``, ``"host"``, ``"[v6]:port"`` or ``(host, port)`` -> ``(host, port)``."""
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
    elif isinstance(address, str) and address:
        host, sep, port_text = address.rpartition(":")
        if not sep or "]" in port_text:
            host, port_text = address, str(DEFAULT_PORT)
        host = host.strip("[]")
        try:
            port = int(port_text)
        except ValueError:
            raise ArgumentError(f"bad port in address {address!r}") from None
    else:
        raise ArgumentError(f"an address is 'host:port' or (host, port), not {address!r}")
    if not isinstance(host, str) or not host or not isinstance(port, int) or not 0 < port < 65536:
        raise ArgumentError(f"bad address {address!r}")
    return host, port


def named_addresses(servers: Servers, what: str = "server") -> list[tuple[str, str, int]]:
    """``(name, host, port)`` for each of ``servers``: a list of addresses (each named
    ``"host:port"``, as libketama clients name servers) or a mapping of names to addresses
    (names, not addresses, are what a ring hashes).  A bare string, no address at all or a
    name given twice is an ArgumentError; ``what`` names the servers in its message."""
    if isinstance(servers, (str, bytes)) or not isinstance(servers, Iterable):
        raise ArgumentError(f"{what}s must be a list of addresses or a mapping of name -> address")
    if isinstance(servers, Mapping):
        named = [(name, *parse_address(addr)) for name, addr in servers.items()]
    else:
        named = [(f"{host}:{port}", host, port) for host, port in map(parse_address, servers)]
    if not named:
        raise ArgumentError(f"at least one {what} is needed")
    names = [name for name, _, _ in named]
    if len(set(names)) != len(names):
        raise ArgumentError(f"duplicate {what} names: {names}")
    return named
