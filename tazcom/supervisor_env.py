"""Prepare the environment of ``supervisord``/``supervisorctl`` before they read their config.

Called from ``tazcom_env.pth`` at interpreter start-up, only in those two
programs (see setup.py for why). It sets ``TAZCOM_HOME`` to the documented
default when it is unset, ``TAZCOM_RUN`` to the node's socket directory,
sets ``TAZCOM_PYTHON`` to this interpreter (the one
that has TAZCOM installed, which supervisord.conf runs the services with), and
creates the home's ``run`` and ``logs`` directories, which supervisord needs
before it starts, and lets the services cache their bytecode. It must never
raise: a broken hook would break supervisord.
"""

from __future__ import annotations

import os
import sys

WAKER = """
import socket, sys, time
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.01)
    finally:
        s.close()
"""


def _wake_supervisord(sock_path: str) -> None:
    """Start a helper that connects once to supervisord's socket as soon as it exists.

    supervisord starts its programs only after the first turn of its main loop,
    which waits up to one second for an event; the connection is that event, and
    it saves a second on every node launch (bench/discovery_time.py).
    """
    import subprocess

    subprocess.Popen([sys.executable, "-S", "-c", WAKER, sock_path], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def prepare() -> None:
    try:
        from tazcom.common.config import Paths, home_from_env

        home = home_from_env(os.environ)
        os.environ["TAZCOM_HOME"] = str(home)
        os.environ.setdefault("TAZCOM_PYTHON", sys.executable)
        paths = Paths(home=home)
        os.environ["TAZCOM_RUN"] = str(paths.run)
        for directory in (home, paths.run, paths.logs):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(paths.run, 0o700)
        # The services start on every launch and restart: without cached bytecode each
        # compiles TAZCOM's modules again, about 0.1 CPU-s a service, which on a small
        # machine pushes discovery past its two seconds. Python still writes no cache
        # where it may not.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        argv = sys.argv[1:]
        if os.path.basename(sys.argv[0]).startswith("supervisord") and not (
                {"-h", "--help", "-v", "--version"} & set(argv)):
            _wake_supervisord(str(paths.run / "supervisor.sock"))
    except Exception as e:  # noqa: BLE001 - a hook that raises would break supervisord
        print(f"tazcom: could not prepare the node home: {e}", file=sys.stderr)
