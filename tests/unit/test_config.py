from __future__ import annotations

from pathlib import Path

import pytest

from tazcom.common.config import MAX_UNIX_PATH, Paths, load_config
from tazcom.common.errors import ConfigError
from tazcom.services.runtime import load_defaults_text

DEFAULTS = load_defaults_text()


def cfg(env: dict[str, str] | None = None, node: str | None = None):
    return load_config(defaults_text=DEFAULTS, env=env or {"HOME": "/home/u"}, node_text=node,
                       login="u")


def test_defaults() -> None:
    c = cfg()
    assert c.paths.home == Path("/home/u/.local/share/tazcom")
    assert (c.nickname, c.interfaces, c.port) == ("u", (), 0)
    assert "discovery" in c.services
    assert c.service_type == "_tazcom._tcp.local."


def test_environment_overrides_node_file_overrides_defaults() -> None:
    node = '[node]\nnickname = "fromfile"\nport = 5000\n[bus]\nsend_hwm = 7\n'
    c = cfg({"HOME": "/h"}, node)
    assert (c.nickname, c.port, c.bus_send_hwm) == ("fromfile", 5000, 7)
    c = cfg({"HOME": "/h", "TAZCOM_NICK": "env", "TAZCOM_PORT": "6000",
             "TAZCOM_INTERFACES": "lo, 10.0.0.1 ,", "TAZCOM_HOME": "/srv/n1"}, node)
    assert (c.nickname, c.port, c.interfaces) == ("env", 6000, ("lo", "10.0.0.1"))
    assert c.paths.home == Path("/srv/n1")
    assert c.paths.socket("bus-in") == "ipc:///srv/n1/run/bus-in.sock"


@pytest.mark.parametrize(
    ("env", "node", "match"),
    [
        ({"TAZCOM_PORT": "x"}, None, "TAZCOM_PORT"),
        ({"TAZCOM_PORT": "70000"}, None, "node.port"),
        ({"TAZCOM_NICK": "x" * 33}, None, "nickname"),
        ({"TAZCOM_NICK": "a\nb"}, None, "printable"),
        ({}, "[node]\nport = 'eighty'", "node.port"),
        ({}, "[node]\ninterfaces = 'lo'", "node.interfaces"),
        ({}, "[bus]\nsend_hwm = -1", "bus.send_hwm"),
        ({}, "[bus]\nsend_hwm = true", "bus.send_hwm"),
        ({}, "not toml at all [", "tazcom.toml"),
    ],
)
def test_rejects_bad_config(env: dict[str, str], node: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg({"HOME": "/h", **env}, node)


def test_deep_home_gets_short_socket_dir() -> None:
    deep = Paths(home=Path("/tmp/" + "d" * 120))
    assert len(deep.socket("discovery")) - len("ipc://") <= MAX_UNIX_PATH
    assert deep.run == Paths(home=Path("/tmp/" + "d" * 120)).run  # stable for CLI and services
