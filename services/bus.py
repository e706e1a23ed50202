"""The node's event bus: an XSUB/XPUB forwarder, and the health table behind ``tazcom status``.

Publishers connect PUB sockets to ``run/bus-in.sock`` (XSUB), subscribers SUB
sockets to ``run/bus-out.sock`` (XPUB); the forwarding is ``zmq.proxy`` in
libzmq, in a thread, so events never pass through Python here. The XSUB
subscribes to everything upstream, so publishers never filter away an event
before a new subscriber's subscription has travelled up to them; the XPUB
filters per subscriber and greets each new one with ``bus.welcome``.
docs/protocol.md, "Bus". The health table is fed by ``service.*`` events and by
the kernel, which tells the bus when a service's process ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable

import zmq

from tazcom.common import rpc
from tazcom.common.events import (
    WELCOME_TOPIC,
    Event,
    ServiceHealthChanged,
    ServiceHeartbeat,
    ServiceStarted,
    ServiceStopping,
)
from tazcom.common.health import HealthTable

from .busclient import bus_in, bus_out, tune
from .runtime import Runtime, run


class Health:
    """The health table as a mirrored table (docs/protocol.md §2): every row that changes
    goes out as a numbered ``service.health``; a timer catches changes that time alone
    makes (overdue heartbeats, the end of a restart window)."""

    def __init__(self, rt: Runtime, table: HealthTable) -> None:
        self.rt = rt
        self.table = table
        self.numbering = rt.own_table("health")
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

    def publish(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for row in self.table.changes(now):
            self.rt.bus.emit(ServiceHealthChanged, epoch=self.numbering.epoch,
                             seq=self.numbering.next(), health=row)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.table.next_deadline()
        if deadline is not None:
            self._timer = self.loop.call_later(max(0.0, deadline - now) + 0.05, self.publish,
                                               None)

    def exited(self, service: str, pid: int) -> None:
        self.table.exited(service, pid, time.time())
        self.publish()

    def snapshot(self, _req: rpc.GetStatus) -> rpc.StatusReport:
        now = time.time()
        self.publish(now)  # so the rows are those of the version the reply names
        return rpc.StatusReport(epoch=self.numbering.epoch, seq=self.numbering.seq,
                                services=self.table.report(now))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class ExitWatcher:
    """Learns from the kernel the moment a service's process ends (a pidfd per service,
    read by the event loop), so ``tazcom status`` says ``down`` at once without frequent
    heartbeats. Where pidfds are missing (not Linux >= 5.3), heartbeats still tell."""

    def __init__(self, on_exit: Callable[[str, int], None]) -> None:
        self.on_exit = on_exit
        self.loop = asyncio.get_running_loop()
        self._fds: dict[str, tuple[int, int]] = {}  # service -> (pid, pidfd)

    def watch(self, service: str, pid: int) -> None:
        current = self._fds.get(service)
        if current is not None and current[0] == pid:
            return
        self._forget(service)
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return  # gone already, or no pidfd here: heartbeats will say
        self._fds[service] = (pid, fd)
        self.loop.add_reader(fd, self._ended, service, pid)

    def _ended(self, service: str, pid: int) -> None:
        self._forget(service)
        self.on_exit(service, pid)

    def _forget(self, service: str) -> None:
        entry = self._fds.pop(service, None)
        if entry is not None:
            self.loop.remove_reader(entry[1])
            os.close(entry[1])

    def close(self) -> None:
        for service in list(self._fds):
            self._forget(service)


def _bind_ipc(sock: zmq.Socket, endpoint: str) -> None:
    sock.bind(endpoint)
    os.chmod(endpoint.removeprefix("ipc://"), 0o600)


async def main(rt: Runtime) -> None:
    config = rt.config
    config.paths.run.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(config.paths.run, 0o700)
    ctx = zmq.Context.shadow(rt.ctx.underlying)
    xsub = ctx.socket(zmq.XSUB)
    xpub = ctx.socket(zmq.XPUB)
    for sock in (xsub, xpub):
        tune(sock, config)
    # Threat: one publisher (or a stranger's process) sending a huge frame;
    # libzmq drops that connection instead of buffering it.
    xsub.setsockopt(zmq.MAXMSGSIZE, config.bus_max_event_bytes)
    xpub.setsockopt(zmq.XPUB_WELCOME_MSG, WELCOME_TOPIC.encode())
    _bind_ipc(xsub, bus_in(config))
    _bind_ipc(xpub, bus_out(config))
    xsub.send(b"\x01")  # subscribe upstream to everything (see module docstring)

    control_addr = f"inproc://bus-control-{os.getpid()}"
    control = ctx.socket(zmq.PAIR)
    control.bind(control_addr)
    proxy_control = ctx.socket(zmq.PAIR)
    proxy_control.connect(control_addr)

    def forward() -> None:
        with contextlib.suppress(zmq.ContextTerminated, zmq.ZMQError):
            zmq.proxy_steerable(xsub, xpub, None, proxy_control)

    thread = threading.Thread(target=forward, name="bus-proxy", daemon=True)
    thread.start()

    health = HealthTable(config.services, interval=config.heartbeat_interval)
    table = Health(rt, health)
    watcher = ExitWatcher(table.exited)

    def on_service(ev: Event) -> None:
        if isinstance(ev, ServiceHeartbeat | ServiceStarted | ServiceStopping):
            health.observe(ev, time.time())
            table.publish()
            if not isinstance(ev, ServiceStopping):
                watcher.watch(ev.service, ev.pid)

    rt.bus.subscribe("service.", on_service)
    rt.serve({rpc.GetStatus: table.snapshot})
    rt.ready(f"{bus_in(config)} -> {bus_out(config)}")
    table.publish()
    try:
        await asyncio.Event().wait()
    finally:
        table.close()
        watcher.close()
        control.send(b"TERMINATE")
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 2.0)
        for sock in (control, proxy_control, xsub, xpub):
            sock.close(linger=0)


if __name__ == "__main__":
    run("bus", main)
