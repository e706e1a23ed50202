"""What supervisord needs from TAZCOM: its environment prepared, and each service started lean.

``prepare()`` is called from ``tazcom_env.pth`` at interpreter start-up, only in
``supervisord`` and ``supervisorctl`` (see setup.py for why). It sets ``TAZCOM_HOME`` to
the documented default when it is unset, ``TAZCOM_RUN`` to the node's socket directory,
sets ``TAZCOM_PYTHON`` to this interpreter (the one
that has TAZCOM installed, which supervisord.conf runs the services with), and
creates the home's ``run`` and ``logs`` directories, which supervisord needs
before it starts, and lets the services cache their bytecode. It must never
raise: a broken hook would break supervisord.

``python -m tazcom.supervisor_env tazcom.services.<name>`` runs a service module as
``python -m tazcom.services.<name>`` would, after importing asyncio and hashlib without
OpenSSL (``import_without_openssl``): asyncio imports ``ssl`` and hashlib ``_hashlib``
whether or not they are used, and loading libssl and libcrypto costs each process about
4 MiB, while TAZCOM uses no TLS and no hash of OpenSSL's (docs/perf/processes.md).
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
        if os.path.basename(sys.argv[0]).startswith("supervisord"):
            # supervisord imports ssl (through http.client, which does without it) and
            # hashlib, and uses neither TLS nor OpenSSL's hashes: its imports come after
            # this hook, so ssl stays out for good (tests/unit/test_imports.py checks that
            # supervisord's modules import without it).
            import_without_openssl(("hashlib",))
            sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
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


#: What every service imports with OpenSSL out of reach (hmac: the gateway's Noise).
LEAN_IMPORTS = ("asyncio", "hashlib", "hmac")


def import_without_openssl(modules: tuple[str, ...] = LEAN_IMPORTS) -> None:
    """Import ``modules`` while ``ssl`` and ``_hashlib`` cannot be imported, then let
    them be imported again.

    asyncio imports ``ssl`` at once (``base_events``, ``selector_events``, ``sslproto``),
    and hashlib and hmac import ``_hashlib``, OpenSSL's hashes; all of them are written
    for a Python without OpenSSL. asyncio then refuses only TLS, which no service uses;
    hashlib falls back to CPython's own hashes (BLAKE2b, TAZCOM's hash, is CPython's own
    either way). (A lazily loaded ``ssl`` would not do: an ``import`` statement loads
    it.) Afterwards both import as usual, so a library that needs them still gets them;
    tests/unit/test_imports.py checks that no service does.
    """
    blocked = [name for name in ("ssl", "_hashlib") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # import: ImportError
    try:
        for module in modules:
            __import__(module)
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def run_service(module: str) -> None:
    """Run ``module`` as ``python -m module`` would, its imports made lean first."""
    import runpy

    import_without_openssl()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit(0)  # a service exits from its own run(); this is for a module that returns


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].startswith("tazcom.services."):
        sys.exit("usage: python -m tazcom.supervisor_env tazcom.services.<name> [args]")
    module = sys.argv[1]
    del sys.argv[1]  # the service sees the argv that -m would give it
    run_service(module)


if __name__ == "__main__":
    main()
