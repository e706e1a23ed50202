"""common/ is pure: importing any module of it pulls in no socket, asyncio, zmq or zeroconf."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import tazcom.common

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
