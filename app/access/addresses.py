"""Client addresses as per-client limits count them."""

from __future__ import annotations

import ipaddress


def client_key(host: str) -> str:
    """The address a per-client limit counts: the IPv4 address, or the IPv6 /64.

    One IPv6 subscriber usually holds a whole /64, so counting single addresses would
    let one client take a fresh address for each connection or guess.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
