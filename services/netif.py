"""Which IPv4 addresses a node uses: from TAZCOM_INTERFACES, or every up interface."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import ifaddr

from tazcom.common.errors import ConfigError

IFF_UP = 0x1


def _is_up(name: str) -> bool:
    try:
        return bool(int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & IFF_UP)
    except (OSError, ValueError):
        return True  # not Linux sysfs: trust ifaddr's list


def _ipv4_by_interface() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.setdefault(adapter.nice_name, []).append(ip.ip)
    return found


def resolve_interfaces(wanted: tuple[str, ...]) -> list[str]:
    """IPv4 addresses for interface names or literal addresses; default: all up, non-loopback.

    Raises ConfigError naming what could not be resolved, or when nothing is left.
    """
    table = _ipv4_by_interface()
    out: list[str] = []
    if not wanted:
        for name, ips in table.items():
            if _is_up(name):
                out += [ip for ip in ips if not ipaddress.IPv4Address(ip).is_loopback]
    else:
        for item in wanted:
            try:
                out.append(str(ipaddress.IPv4Address(item)))
                continue
            except ValueError:
                pass
            if item not in table:
                raise ConfigError(f"interface {item!r} has no IPv4 address (or does not exist)")
            out += table[item]
    out = list(dict.fromkeys(out))
    if not out:
        raise ConfigError("no usable IPv4 interface (set TAZCOM_INTERFACES)")
    return out


def interface_networks(ips: list[str]) -> list[ipaddress.IPv4Interface]:
    """The network (address/prefix) of each of our addresses; /32 when unknown."""
    prefixes: dict[str, int] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                prefixes.setdefault(ip.ip, ip.network_prefix)
    return [ipaddress.IPv4Interface(f"{ip}/{prefixes.get(ip, 32)}") for ip in ips]
