"""Real nodes for tests and benchmarks: supervisord, a node home each, loopback or namespaces.

``Node`` launches ``supervisord -c supervisord.conf`` exactly as a user does,
with ``TAZCOM_HOME`` in a fresh directory and ``TAZCOM_INTERFACES`` set
(``lo`` unless the node lives in a test namespace): nothing here ever uses
the machine's real interfaces. ``stop()`` shuts the node down and then kills,
by its environment, any process of that node that is still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "supervisord.conf"
BIN = Path(sys.executable).parent
SERVICES = ("bus", "identity", "gateway", "discovery", "router")
#: A node config for tests that post in bulk (a stream of hundreds of messages from one
#: node): the per-origin flood limits, sized for people, raised out of the way. Tests of
#: the limits themselves use the defaults.
BULK = """[router]
room_rate = 1e6
room_burst = 1e6
dm_rate = 1e6
dm_burst = 1e6
receipt_rate = 1e6
receipt_burst = 1e6
link_envelope_rate = 1e6
link_envelope_burst = 1e6
address_rate = 1e6
address_burst = 1e6
"""
#: What a benchmark that uses ``BULK`` prints, so its figures never silently measure a mesh
#: with the protection off.
BULK_NOTE = ("TAZCOM nodes run with the flood limits raised out of the way (tests.harness.BULK): "
             "these figures measure throughput, not the limits sized for people")
T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_for(predicate: Callable[[], T], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)  # noqa: sleep-ok - polling interval under a deadline


def tool(name: str) -> str:
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def short_tmp(prefix: str = "tz") -> Path:
    """A short temporary directory (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Node:
    def __init__(self, home: Path, nick: str, *, interfaces: str = "lo", port: int = 0,
                 netns: str | None = None, env: dict[str, str] | None = None,
                 config: str | None = None) -> None:
        self.home = home
        #: The node's own tazcom.toml (e.g. ``BULK``), written at the first start.
        self.config = config
        self.nick = nick
        self.netns = netns
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TAZCOM_")},
            "TAZCOM_HOME": str(home),
            "TAZCOM_NICK": nick,
            "TAZCOM_INTERFACES": interfaces,
            "TAZCOM_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.started_at: float | None = None
        self._key: str | None = None

    def __repr__(self) -> str:
        return f"Node({self.nick}, {self.home})"

    # -- processes ------------------------------------------------------------------

    def _argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self._argv(argv), env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self._argv(argv), env=self.env, cwd=ROOT, text=True, **kw)

    def start(self) -> Node:
        self.home.mkdir(parents=True, exist_ok=True)
        node_config = self.home / "tazcom.toml"
        if self.config is not None and not node_config.exists():
            node_config.write_text(self.config)
        self.started_at = time.monotonic()
        self.run([tool("supervisord"), "-c", str(CONF)])
        return self

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run([tool("supervisorctl"), "-c", str(CONF), *args], check=check)

    def cli(self, *args: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.run([tool("tazcom"), *args], check=check, timeout=timeout)

    def cli_json(self, *args: str) -> list[dict[str, Any]]:
        out = self.cli(*args, "--json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def try_json(self, *args: str) -> list[dict[str, Any]] | None:
        proc = self.cli(*args, "--json", check=False)
        if proc.returncode != 0:
            return None
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    # -- queries ----------------------------------------------------------------------

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = self.cli_json("id")[0]["key"]
        return self._key

    # Polled in loops, so asked in-process (what `tazcom peers --json` and `tazcom status
    # --json` print, without a Python process per poll competing with the nodes for CPU).

    def peers(self) -> dict[str, dict[str, Any]]:
        """Peers by nickname ({} while discovery does not answer)."""
        from tazcom.common import rpc
        from tazcom.common.errors import TazcomError
        from tazcom.common.schema import to_jsonable

        try:
            snap = request(self, "discovery", rpc.GetPeers(), timeout=2.0)
        except (Timeout, TazcomError):
            return {}
        return {p.nickname: to_jsonable(p.to_dict()) for p in snap.peers}

    def status(self) -> dict[str, dict[str, Any]]:
        """Service health by name, as the bus reports it ({} while it does not answer)."""
        from tazcom.common import rpc
        from tazcom.common.errors import TazcomError
        from tazcom.common.schema import to_jsonable

        try:
            report = request(self, "bus", rpc.GetStatus(), timeout=2.0)
        except (Timeout, TazcomError):
            return {}
        return {r.service: to_jsonable(r.to_dict()) for r in report.services}

    def pid(self, service: str) -> int | None:
        out = self.ctl("pid", f"tazcom:{service}", check=False).stdout.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    def all_up(self, services: tuple[str, ...] = SERVICES) -> bool:
        st = self.status()
        return all(st.get(s, {}).get("state") == "up" for s in services)

    def wait_up(self, timeout: float = 30) -> Node:
        try:
            wait_for(self.all_up, timeout, f"{self.nick}: every service up")
        except Timeout as e:
            states = {k: v.get("state") for k, v in self.status().items()}
            tails = {k: v.splitlines()[-3:] for k, v in self.logs().items()}
            raise Timeout(f"{e}; states {states}; log tails {tails}") from None
        return self

    def wait_peer(self, nick: str, states: tuple[str, ...], timeout: float = 10) -> dict:
        try:
            return wait_for(lambda: (p := self.peers().get(nick)) and p["state"] in states and p,
                            timeout, f"{self.nick} to see {nick} in {states}")
        except Timeout as e:
            # what the table held and what discovery and the gateway last said
            peers = self.try_json("peers")
            logs = self.logs()
            tails = {k: logs.get(k, "").splitlines()[-8:]
                     for k in ("discovery.log", "gateway.log")}
            raise Timeout(f"{e}; peers {peers}; log tails {tails}") from None

    # -- logs -------------------------------------------------------------------------

    def logs(self) -> dict[str, str]:
        out = {}
        for path in sorted((self.home / "logs").glob("*.log*")):
            with contextlib.suppress(OSError):
                out[path.name] = path.read_text(errors="replace")
        return out

    def tracebacks(self) -> list[str]:
        return [f"{name}:\n{text}" for name, text in self.logs().items()
                if "Traceback" in text]

    # -- teardown -----------------------------------------------------------------------

    def own_pids(self) -> list[int]:
        """Every live process whose environment names this node's home."""
        needle = f"TAZCOM_HOME={self.home}\0".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "environ").read_bytes() + b"\0":
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def stop(self, timeout: float = 15) -> None:
        self.ctl("shutdown", check=False)
        with contextlib.suppress(Timeout):
            wait_for(lambda: not self.own_pids(), timeout, f"{self.nick} to stop")
        for pid in self.own_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def linked_pair(nick_a: str, nick_b: str, config: str | None = None
                ) -> Iterator[tuple[Node, Node]]:
    """Two loopback nodes, up and linked (verified); both stopped and removed at the end."""
    root = short_tmp("tzb")
    a, b = Node(root / "a", nick_a, config=config), Node(root / "b", nick_b, config=config)
    try:
        a.start()
        b.start()
        a.wait_up()
        b.wait_up()
        a.wait_peer(nick_b, ("verified",))
        yield a, b
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def nodes_cleanup() -> Iterator[list[Node]]:
    """Collect nodes; stop all of them at the end, also on failure."""
    started: list[Node] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


class BusTap:
    """Collect a node's bus events in a background thread (an in-process SUB socket)."""

    def __init__(self, node: Node, *prefixes: str) -> None:
        import threading

        import zmq

        from tazcom.common.events import decode_event

        self._decode = decode_event
        self.events: list[Any] = []
        #: (arrival time, event) for every event, arrival by this process's clock
        self.arrivals: list[tuple[float, Any]] = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 1_000_000)  # a slow test thread must not lose any
        for p in prefixes or ("",):
            self._sock.setsockopt(zmq.SUBSCRIBE, p.encode())
        self._sock.setsockopt(zmq.SUBSCRIBE, b"bus.welcome")
        self._sock.connect(f"ipc://{node.home}/run/bus-out.sock")
        self._welcomed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._welcomed.wait(10)

    def _run(self) -> None:
        from tazcom.common.errors import RemoteProtocolError

        while not self._stop.is_set():
            if not self._sock.poll(100):
                continue
            frames = self._sock.recv_multipart()
            if frames == [b"bus.welcome"]:
                self._welcomed.set()
                continue
            try:
                ev = self._decode(frames)
            except RemoteProtocolError:
                continue
            with self._lock:
                self.events.append(ev)
                self.arrivals.append((time.time(), ev))

    def of(self, topic: str) -> list[Any]:
        with self._lock:
            return [e for e in self.events if topic == e.TOPIC]

    def wait(self, topic: str, pred: Callable[[Any], bool] = lambda e: True,
             timeout: float = 10, interval: float = 0.05) -> Any:
        return wait_for(lambda: next((e for e in self.of(topic) if pred(e)), None), timeout,
                        f"a {topic} event", interval=interval)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._ctx.destroy(linger=0)


def request(node: Node, service: str, req: Any, timeout: float = 5.0) -> Any:
    """One request to a node's service (sync, in-process); raises RequestFailed on error."""
    import zmq

    from tazcom.common import codec, rpc

    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(f"ipc://{node.home}/run/{service}.sock")
        sock.send(rpc.encode_request(req, 1))
        if not sock.poll(int(timeout * 1000)):
            raise Timeout(f"{service} did not answer {req.OP}")
        return rpc.parse_reply(codec.unpack(sock.recv(), 1 << 24), req.REPLY)
    finally:
        ctx.destroy(linger=0)


def post(node: Node, text: str, to: str | None = None) -> Any:
    """Post a room message (or a DM to the key ``to``) through the node's router."""
    from tazcom.common import rpc

    return request(node, "router", rpc.Post(client_id=os.urandom(16),
                                            to=bytes.fromhex(to) if to else None, text=text),
                   timeout=10)


def history(node: Node, conv: str | None = None, limit: int = 10000) -> list[Any]:
    """The room's history (or the DMs with the key ``conv``), as the store answers it."""
    from tazcom.common import rpc

    reply = request(node, "store", rpc.StoreHistory(
        conv=bytes.fromhex(conv) if conv else None, limit=limit))
    return list(reply.messages)


@contextlib.contextmanager
def lan_nodes(links: dict[str, list[int]], *, start: bool = True
              ) -> Iterator[tuple[Any, dict[str, Node]]]:
    """A node ``node-<host>`` in each host's namespace of ``tests.netns.lan(links)`` (on
    all of its interfaces); ``start``: launched and up. At the end every node is stopped
    before its namespace goes, and a traceback in any node's logs fails the test."""
    from tests.netns import lan

    root = short_tmp()
    nodes: dict[str, Node] = {}
    with lan(links) as net:
        try:
            for host in links:
                nodes[host] = Node(root / host, f"node-{host}", netns=net.ns(host),
                                   interfaces=",".join(net.interfaces[host]))
            if start:
                for node in nodes.values():
                    node.start()
                for node in nodes.values():
                    node.wait_up()
            yield net, nodes
        finally:
            problems = []
            for node in nodes.values():
                node.stop()
                problems += node.tracebacks()
            shutil.rmtree(root, ignore_errors=True)
            assert not problems, "\n".join(problems)
