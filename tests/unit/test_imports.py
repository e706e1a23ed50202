"""What modules load where.

common/ is pure: importing any module of it pulls in no socket, asyncio, zmq or zeroconf.
The node's processes load no OpenSSL and no uvloop (docs/perf/processes.md).
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import tazcom.common
import tazcom.services

MODULES = sorted(m.name for m in pkgutil.iter_modules(tazcom.common.__path__))
FORBIDDEN = ("zmq", "asyncio", "socket", "zeroconf")


@pytest.mark.parametrize("module", MODULES)
def test_common_module_is_sans_io(module: str) -> None:
    code = (
        "import sys, importlib\n"
        f"importlib.import_module('tazcom.common.{module}')\n"
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"tazcom.common.{module} imports {out}"


# -- what the node's processes load (docs/perf/processes.md) ---------------------------


#: Modules no process of a node needs: OpenSSL (``ssl``; ``_hashlib``, libcrypto's
#: hashes) costs about 4 MiB a process, uvloop 1 MiB and imports ``ssl``.
UNWANTED = ("ssl", "_ssl", "_hashlib", "uvloop")


def _service_modules() -> list[str]:
    """Modules of tazcom.services that run as a program (``python -m ...``)."""
    found = []
    for m in pkgutil.iter_modules(tazcom.services.__path__):
        origin = pkgutil.resolve_name(f"tazcom.services.{m.name}").__spec__.origin
        with open(origin, encoding="utf-8") as f:
            if 'if __name__ == "__main__":' in f.read():
                found.append(m.name)
    return sorted(found)


def _loaded(code: str, env: dict[str, str] | None = None) -> str:
    code += f"\nprint(','.join(m for m in {UNWANTED!r} if sys.modules.get(m) is not None))\n"
    env = {**os.environ, **(env or {})}
    env.pop("TAZCOM_LOOP", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def test_services_found() -> None:
    assert {"bus", "identity", "gateway", "discovery", "router"} <= set(_service_modules())


@pytest.mark.parametrize("service", _service_modules())
def test_service_imports_no_openssl_nor_uvloop(service: str) -> None:
    """A service started by ``python -m tazcom.supervisor_env`` (supervisord.conf) loads
    neither OpenSSL nor uvloop: its import closure, and its event loop."""
    out = _loaded(
        "import sys\n"
        "from tazcom.supervisor_env import import_without_openssl\n"
        "import_without_openssl()\n"
        f"import tazcom.services.{service}\n"
        "from tazcom.services.runtime import _install_loop_policy\n"
        "_install_loop_policy()\n"
        "import asyncio\n"
        "asyncio.new_event_loop().close()\n")
    assert out == "", f"tazcom.services.{service} loads {out}"


def test_openssl_still_importable_after_lean_imports() -> None:
    """The block lasts only while asyncio and hashlib are imported: a library that needs
    ``ssl`` later still gets it."""
    out = _loaded(
        "import sys\n"
        "from tazcom.supervisor_env import import_without_openssl\n"
        "import_without_openssl()\n"
        "import asyncio.base_events, hashlib\n"
        "assert asyncio.base_events.ssl is None\n"
        "assert hashlib.blake2b(b'x').digest()\n"
        "import ssl\n")
    assert out.split(",")[:2] == ["ssl", "_ssl"]


def test_supervisord_reads_the_config_without_openssl(tmp_path: Path) -> None:
    """supervisord's hook keeps ``ssl`` (and libcrypto's hashes) out of supervisord, which
    must still import everything it uses and read supervisord.conf."""
    conf = Path(__file__).resolve().parents[2] / "supervisord.conf"
    out = _loaded(
        "import sys\n"
        "sys.argv = ['supervisord', '--version']  # --version: no waker process\n"
        "from tazcom import supervisor_env\n"
        "supervisor_env.prepare()\n"
        "import supervisor.events, supervisor.http, supervisor.poller, supervisor.process\n"
        "import supervisor.rpcinterface, supervisor.supervisord, supervisor.xmlrpc\n"
        "from supervisor.options import ServerOptions\n"
        "options = ServerOptions()\n"
        f"options.realize(args=['-c', {str(conf)!r}])\n"
        "assert options.process_group_configs\n",
        env={"TAZCOM_HOME": str(tmp_path / "home")})
    assert out == "", f"supervisord loads {out}"


def test_launcher_runs_the_service_as_main(tmp_path: Path) -> None:
    """``python -m tazcom.supervisor_env tazcom.services.bus`` runs the bus's ``__main__``
    block: with a broken node config, its one log line and exit code 78."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "tazcom.toml").write_text("[bus\n")
    env = {**os.environ, "TAZCOM_HOME": str(home), "TAZCOM_INTERFACES": "lo"}
    proc = subprocess.run([sys.executable, "-m", "tazcom.supervisor_env", "tazcom.services.bus"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 78, proc.stderr
    assert "bus" in proc.stderr and "cannot run: configuration" in proc.stderr
