"""Configuration: shipped defaults, then the node's own file, then the environment.

Pure: the caller reads the files and passes their text and ``os.environ``.
Environment overrides are a contract (MISSION.md): ``TAZCOM_HOME``,
``TAZCOM_NICK``, ``TAZCOM_INTERFACES``, ``TAZCOM_PORT``.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .limits import NICK_MAX

HOME_ENV = "TAZCOM_HOME"
NODE_CONFIG_FILE = "tazcom.toml"
# sockaddr_un.sun_path is 108 bytes on Linux, including the final NUL.
MAX_UNIX_PATH = 107


def default_home(env: Mapping[str, str]) -> Path:
    """The node home when ``TAZCOM_HOME`` is unset: ``$XDG_DATA_HOME/tazcom``."""
    data = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME") or "/", ".local", "share")
    return Path(data) / "tazcom"


def home_from_env(env: Mapping[str, str]) -> Path:
    raw = env.get(HOME_ENV)
    return Path(raw).expanduser().absolute() if raw else default_home(env)


@dataclass(frozen=True, kw_only=True)
class Paths:
    """Where a node keeps its state; everything lives under ``home``."""

    home: Path

    @property
    def run(self) -> Path:
        """0700 directory holding the IPC sockets (docs/protocol.md, "Sockets")."""
        candidate = self.home / "run"
        if len(str(candidate / "discovery.sock")) <= MAX_UNIX_PATH - 8:
            return candidate
        # A deep home would overflow sun_path: use a short per-home directory.
        tag = hashlib.blake2b(str(self.home).encode(), digest_size=8).hexdigest()
        return Path("/tmp") / f"tazcom-{os.getuid()}-{tag}"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def key_file(self) -> Path:
        return self.home / "identity.key"

    @property
    def public_file(self) -> Path:
        return self.home / "identity.pub"

    @property
    def peers_file(self) -> Path:
        return self.home / "peers.json"

    @property
    def pins_file(self) -> Path:
        return self.home / "pins.json"

    @property
    def store_file(self) -> Path:
        """The message store (SQLite); only the store service opens it."""
        return self.home / "store.sqlite"

    @property
    def announce_file(self) -> Path:
        return self.home / "announce.json"

    @property
    def gateway_port_file(self) -> Path:
        return self.home / "gateway.port"

    @property
    def nickname_file(self) -> Path:
        return self.home / "nickname"

    @property
    def node_config(self) -> Path:
        return self.home / NODE_CONFIG_FILE

    def socket(self, name: str) -> str:
        """ZeroMQ endpoint of an IPC socket in the run directory."""
        return f"ipc://{self.run / (name + '.sock')}"


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a service or the CLI reads at start."""

    paths: Paths
    nickname: str
    interfaces: tuple[str, ...]
    port: int
    services: tuple[str, ...]
    bus_max_event_bytes: int
    bus_send_hwm: int
    bus_recv_hwm: int
    heartbeat_interval: float
    rpc_timeout: float
    rpc_retries: int
    rpc_max_request_bytes: int
    service_type: str
    record_ttl: int
    max_peers: int
    resolve_timeout: float
    #: Dial a peer's IPv6 addresses before its IPv4 ones (``node.prefer_ipv6``).
    prefer_ipv6: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _get(tree: Mapping[str, Any], dotted: str, kind: type | tuple[type, ...]) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{dotted}: missing")
        node = node[part]
    if (isinstance(node, bool) and kind is not bool) or not isinstance(node, kind):
        raise ConfigError(f"{dotted}: expected {kind}, got {type(node).__name__}")
    return node


def validate_nickname(nick: str) -> str:
    nick = nick.strip()
    if not 1 <= len(nick.encode()) <= NICK_MAX:
        raise ConfigError(f"nickname must be 1..{NICK_MAX} bytes of UTF-8")
    if any(not ch.isprintable() for ch in nick):
        raise ConfigError("nickname must be printable")
    return nick


def load_config(
    *, defaults_text: str, env: Mapping[str, str], node_text: str | None = None,
    login: str = "tazcom", nickname: str | None = None,
) -> Config:
    """Merge defaults, the node's ``tazcom.toml`` text, the nickname set at run time and
    environment overrides, in that order."""
    tree = _parse_toml(defaults_text, "defaults")
    if node_text is not None:
        tree = _merge(tree, _parse_toml(node_text, NODE_CONFIG_FILE))
    node = dict(tree.get("node", {}))
    if nickname:  # set at run time (identity.set_nickname), stored in the node home
        node["nickname"] = nickname
    if "TAZCOM_NICK" in env:
        node["nickname"] = env["TAZCOM_NICK"]
    if "TAZCOM_INTERFACES" in env:
        node["interfaces"] = [p.strip() for p in env["TAZCOM_INTERFACES"].split(",") if p.strip()]
    if "TAZCOM_PORT" in env:
        try:
            node["port"] = int(env["TAZCOM_PORT"])
        except ValueError:
            raise ConfigError(f"TAZCOM_PORT: not a number: {env['TAZCOM_PORT']!r}") from None
    tree["node"] = node

    port = _get(tree, "node.port", int)
    if not 0 <= port <= 65535:
        raise ConfigError(f"node.port: {port} is not a TCP port")
    interfaces = _get(tree, "node.interfaces", list)
    if not all(isinstance(i, str) and i for i in interfaces):
        raise ConfigError("node.interfaces: expected a list of names or addresses")
    prefer_ipv6 = _get(tree, "node.prefer_ipv6", bool) if "prefer_ipv6" in node else False
    nickname = _get(tree, "node.nickname", str) or login
    services = _get(tree, "node.services", list)
    positive = (
        ("bus.max_event_bytes", int), ("bus.send_hwm", int), ("bus.recv_hwm", int),
        ("bus.heartbeat_interval", (int, float)), ("rpc.timeout", (int, float)),
        ("rpc.max_request_bytes", int), ("discovery.record_ttl", int),
        ("discovery.max_peers", int), ("discovery.resolve_timeout", (int, float)),
    )
    for dotted, kind in positive:
        if _get(tree, dotted, kind) <= 0:
            raise ConfigError(f"{dotted}: must be positive")
    return Config(
        paths=Paths(home=home_from_env(env)),
        nickname=validate_nickname(nickname),
        interfaces=tuple(interfaces),
        prefer_ipv6=prefer_ipv6,
        port=port,
        services=tuple(str(s) for s in services),
        bus_max_event_bytes=_get(tree, "bus.max_event_bytes", int),
        bus_send_hwm=_get(tree, "bus.send_hwm", int),
        bus_recv_hwm=_get(tree, "bus.recv_hwm", int),
        heartbeat_interval=float(_get(tree, "bus.heartbeat_interval", (int, float))),
        rpc_timeout=float(_get(tree, "rpc.timeout", (int, float))),
        rpc_retries=_get(tree, "rpc.retries", int),
        rpc_max_request_bytes=_get(tree, "rpc.max_request_bytes", int),
        service_type=_get(tree, "discovery.service_type", str),
        record_ttl=_get(tree, "discovery.record_ttl", int),
        max_peers=_get(tree, "discovery.max_peers", int),
        resolve_timeout=float(_get(tree, "discovery.resolve_timeout", (int, float))),
        raw=tree,
    )
