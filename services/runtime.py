"""What every service shares: config in, logging, the bus, heartbeats, clean shutdown.

A service module defines ``async def main(rt: Runtime)`` and ends with
``run("name", main)``. ``run`` loads the configuration, opens the bus, starts
the heartbeat, runs ``main`` and, on SIGTERM or SIGINT, publishes
``service.stopping``, cancels ``main`` (whose ``finally`` blocks close what it
opened) and exits 0. A configuration or key-file error is one log line and
exit code 78, which supervisord.conf lists as expected, so it is not restarted
in a loop. A bug (an exception nobody handled) is logged with its traceback
and exits 1, so supervisord restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import zmq
import zmq.asyncio

import tazcom.config
from tazcom import __version__
from tazcom.common import rpc
from tazcom.common.config import Config, load_config
from tazcom.common.display import SafeFormatter
from tazcom.common.errors import ConfigError, KeyFileError, TazcomError
from tazcom.common.events import ServiceHeartbeat, ServiceStarted, ServiceStopping, TableVersion
from tazcom.common.mirror import Change, Mirror, Numbering
from tazcom.common.tables import Table

from .busclient import BusClient, Handler, RpcClient, RpcServer
from .mirrorfeed import LIVE_AGAIN, MirrorFeed

EX_CONFIG = 78
#: Exit status of a service that asks to be started again (sysexits.h EX_TEMPFAIL).
EX_TEMPFAIL = 75
# supervisord counts a process as started after startsecs (1 s, supervisord.conf);
# a fatal error must outlive that to be taken as a clean, expected exit.
STARTSECS = 1.0


class FatalError(TazcomError):
    """The service cannot run with this configuration or state."""

    code = "fatal"


def load_defaults_text() -> str:
    """The shipped ``default.toml``, read beside its package: ``importlib.resources`` (and
    the tempfile, shutil, zipfile, bz2 and lzma it imports) would cost every service about
    0.9 MiB for one file read (docs/perf/processes.md); it stays for a package that is not
    a directory."""
    if tazcom.config.__file__:
        with contextlib.suppress(OSError):
            return Path(tazcom.config.__file__).with_name("default.toml").read_text()
    import importlib.resources

    return importlib.resources.files("tazcom.config").joinpath("default.toml").read_text()


def load_from_env(env: dict[str, str] | None = None) -> Config:
    """The configuration every service and the CLI use."""
    env = dict(os.environ if env is None else env)
    from tazcom.common.config import NODE_CONFIG_FILE, home_from_env

    node_file = home_from_env(env) / NODE_CONFIG_FILE
    try:
        node_text = node_file.read_text() if node_file.exists() else None
    except OSError as e:
        raise ConfigError(f"{node_file}: {e.strerror}") from None
    login = env.get("USER") or env.get("LOGNAME") or "tazcom"
    nick_file = home_from_env(env) / "nickname"
    try:
        nickname = nick_file.read_text().strip() if nick_file.exists() else None
    except OSError:
        nickname = None
    return load_config(defaults_text=load_defaults_text(), env=env, node_text=node_text,
                       login=login, nickname=nickname or None)


def setup_logging(service: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Log lines quote peers (nicknames, details): their message part is escaped.
    handler.setFormatter(SafeFormatter(
        f"%(asctime)s %(levelname)s {service}[%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # python-zeroconf logs every malformed packet; we report junk records ourselves.
    logging.getLogger("zeroconf").setLevel(logging.ERROR)
    if os.environ.get("TAZCOM_DEBUG"):
        logging.getLogger("tazcom").setLevel(logging.DEBUG)


class Runtime:
    """Handles a service's main coroutine gets: config, bus, RPC, state, tasks."""

    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.config = config
        self.log = logging.getLogger(f"tazcom.{name}")
        config.paths.run.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ctx = zmq.asyncio.Context()
        self.bus = BusClient(self.ctx, config, name)
        self.started_at = time.monotonic()
        self.state = "starting"
        self.detail = ""
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._servers: list[RpcServer] = []
        self._clients: dict[str, RpcClient] = {}
        self.crashed: BaseException | None = None
        #: Why the service asked to be started again (exit EX_TEMPFAIL), if it did.
        self.restarting: str | None = None
        self.fatal: TazcomError | None = None
        #: Set while our subscriptions are known to be in effect at the broker.
        self.bus_live = asyncio.Event()
        self._resyncs: list[tuple[Callable[[], Awaitable[None]], str]] = []
        self._welcomes = 0
        #: This process's generation: the epoch of every table it owns. CLOCK_MONOTONIC is
        #: shared by every process of the host, so a restarted owner's epoch is larger.
        self.epoch = time.monotonic_ns() or 1
        self._owned: dict[str, Numbering] = {}

    # -- building blocks -------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` for the life of the service; if it dies of a bug, so does the service."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, FatalError | ConfigError | KeyFileError):
            self.fatal = exc
            self.stopping.set()
        elif exc is not None and self.crashed is None:
            self.crashed = exc
            self.log.critical("task %s failed", task.get_name(), exc_info=exc)
            self.stopping.set()

    def serve(self, handlers: dict[type[rpc.Request], Handler],
              socket: str | None = None) -> RpcServer:
        """Answer requests on ``run/<socket>.sock`` (default: this service's name; the router
        also answers ``store.*`` on ``store.sock``, where clients of the store find it)."""
        name = socket or self.name
        server = RpcServer(self.ctx, self.config, name, handlers)
        self._servers.append(server)
        self.spawn(server.serve_forever(), f"rpc-{name}")
        return server

    def client(self, service: str) -> RpcClient:
        if service not in self._clients:
            self._clients[service] = RpcClient(self.ctx, self.config, service)
        return self._clients[service]

    async def call_until_ready(self, service: str, req: rpc.Request,
                               *, attempt_timeout: float = 0.25) -> Any:
        """Call ``service`` until it answers (it may still be starting); stops with the service."""
        delay = 0.02
        while True:
            try:
                return await self.client(service).call(req, timeout=attempt_timeout, retries=0)
            except TazcomError as e:
                if e.code not in ("unavailable",):
                    raise
            self.client(service)._reset()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def ready(self, detail: str = "") -> None:
        """Main has opened its sockets: announce it and report ``up`` from now on."""
        self.state = "up"
        self.detail = detail
        self.bus.emit(ServiceStarted, service=self.name, pid=os.getpid(), version=__version__)
        self._heartbeat_now()
        self.log.info("%s %s up (pid %d)%s", self.name, __version__, os.getpid(),
                      f": {detail}" if detail else "")
        # What start-up built (modules, classes, config, tables loaded) lives as long as
        # the process: out of the collector's sight, a full collection no longer walks
        # it, which took 5-8 ms per service (docs/perf/processes.md, "Garbage collection").
        gc.collect()
        gc.freeze()

    def waiting(self, detail: str) -> None:
        """Still starting, and why: shown in ``tazcom status`` until ``ready``."""
        self.detail = detail
        self._heartbeat_now()

    def restart(self, reason: str) -> None:
        """Stop, and have supervisord start this service again at once (exit 75, which
        supervisord.conf does not count as expected): for a change a clean start handles
        best, such as new network addresses."""
        if self.restarting is None:
            self.restarting = reason
            self.log.warning("starting again: %s", reason)
            self.stopping.set()

    def _heartbeat_now(self) -> None:
        self.bus.emit(ServiceHeartbeat, service=self.name, pid=os.getpid(), state=self.state,
                      uptime=time.monotonic() - self.started_at, detail=self.detail,
                      tables=tuple(TableVersion(name=name, epoch=n.epoch, seq=n.seq)
                                   for name, n in self._owned.items()))

    # -- mirrored state (docs/protocol.md §2, "Mirrored state") ----------------------------

    def own_table(self, name: str) -> Numbering:
        """Number the changes of a table this service owns; heartbeats carry its version."""
        numbering = self._owned[name] = Numbering(self.epoch)
        return numbering

    def mirror(self, table: Table, on_changes: Callable[[list[Change]], None]) -> Mirror:
        """Mirror another service's table; ``on_changes`` gets what changed, as it changes.
        Snapshots are asked for only while our subscriptions are known to be active."""

        async def fetch(req: rpc.Request) -> Any:
            try:
                return await self.client(table.owner).call(req, timeout=1.0, retries=0)
            except TazcomError as e:
                if e.code == "unavailable":
                    self.client(table.owner)._reset()
                raise

        feed = MirrorFeed(table, on_changes, fetch=fetch, log=self.log, spawn=self.spawn,
                          live=self.bus_live.is_set)
        for topic in (*table.topics, "service.heartbeat"):
            self.bus.subscribe(topic, feed.on_event)

        async def live_again() -> None:
            feed.resync(LIVE_AGAIN)

        self.on_bus_live(live_again, f"mirror {table.name}")
        return feed.core

    def on_bus_live(self, resync: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``resync`` whenever our subscriptions have (again) taken effect at the bus.

        PUB/SUB drops what a subscriber was not yet (or no longer) subscribed to: before
        the broker has our subscriptions, and while a restarted bus is down. A service
        that mirrors another one's state from its events takes a fresh snapshot here."""
        self._resyncs.append((resync, name))
        if self.bus_live.is_set():
            self.spawn(resync(), name)

    def _welcomed(self) -> None:
        # A (re)started bus knows nobody: tell it who we are as soon as our PUB is through,
        # rather than at the next heartbeat tick (bench/recovery.py).
        self.bus_live.clear()
        self._welcomes += 1
        generation = self._welcomes

        async def announce() -> None:
            # The ping comes back only after the broker took every subscription sent
            # before it (one connection, in order): from then on no event is missed.
            while not await self.bus.wait_ready(2.0):
                if generation != self._welcomes:
                    return  # a newer welcome took over
            if generation != self._welcomes:
                return
            self._heartbeat_now()
            self.bus_live.set()
            for resync, name in self._resyncs:
                self.spawn(resync(), name)

        self.spawn(announce(), "welcome")

    async def _heartbeat(self) -> None:
        while True:
            self._heartbeat_now()
            await asyncio.sleep(self.config.heartbeat_interval)

    # -- life cycle -------------------------------------------------------------------

    async def _run(self, main: Callable[[Runtime], Awaitable[None]]) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.bus.on_welcome.append(self._welcomed)
        self.spawn(self.bus.dispatch_forever(), "bus-dispatch")
        self.spawn(self._heartbeat(), "heartbeat")
        main_task = self.spawn(main(self), "main")
        stop_wait = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({main_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if self.fatal is not None:
            code = await self._fatal(self.fatal)
        elif self.crashed is not None:
            code = 1
        elif self.restarting is not None:
            code = EX_TEMPFAIL
        self.state = "stopping"
        self.bus.emit(ServiceStopping, service=self.name, pid=os.getpid())
        for task in list(self._tasks):
            task.cancel()
        stop_wait.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            server.close()
        for client in self._clients.values():
            client.close()
        self.bus.close()
        self.ctx.destroy(linger=0)  # also closes any socket a failed start left open
        return code

    async def _fatal(self, exc: TazcomError) -> int:
        self.log.error("cannot run: %s", exc.message)
        self.state, self.detail = "failed", exc.message
        self._heartbeat_now()
        remaining = STARTSECS + 0.2 - (time.monotonic() - self.started_at)
        if remaining > 0:
            await asyncio.sleep(remaining)
        return EX_CONFIG


def _install_loop_policy() -> None:
    """asyncio's own event loop, unless ``TAZCOM_LOOP=uvloop`` (for measuring it again).

    On the services' paths uvloop saved no CPU per request or per link frame, only about
    2 us per turn of the loop, and costs each process 1.9 MiB with the OpenSSL it imports
    (docs/perf/processes.md, "uvloop").
    """
    if os.environ.get("TAZCOM_LOOP") != "uvloop":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def fatal_exit(service: str, message: str) -> NoReturn:
    logging.getLogger(f"tazcom.{service}").error("cannot run: %s", message)
    time.sleep(STARTSECS + 0.2)  # see STARTSECS
    sys.exit(EX_CONFIG)


def run(name: str, main: Callable[[Runtime], Awaitable[None]]) -> None:
    """Entry point of every service module."""
    setup_logging(name)
    try:
        config = load_from_env()
    except ConfigError as e:
        fatal_exit(name, f"configuration: {e.message}")
    _install_loop_policy()

    async def amain() -> int:
        rt = Runtime(name, config)
        return await rt._run(main)

    code = asyncio.run(amain())
    with contextlib.suppress(Exception):
        logging.getLogger(f"tazcom.{name}").info("%s stopped (exit %d)", name, code)
    sys.exit(code)
