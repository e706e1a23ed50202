"""``tazcom`` against stub services: block and mute, scores in peers, history by arrival,
refused posts, a silent store, and peer text printed harmlessly.

The stubs are real ``RpcServer`` sockets in a node home of their own (a thread runs
their event loop): the CLI talks to them exactly as to a node, nothing else runs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from tazcom import cli
from tazcom.common import rpc
from tazcom.common.errors import RequestFailed
from tazcom.common.events import FileStatus, PeerInfo, ServiceHealth, encode_event
from tazcom.common.keys import fingerprint
from tazcom.common.schema import fields as schema_fields
from tazcom.services.busclient import RpcServer, bus_out
from tazcom.services.runtime import load_from_env
from tests.harness import short_tmp

ME = "11" * 32
BOB = "b0" * 32
FAR = "fa" * 32  # known only through the mesh
NEVER = "0e" * 32  # never seen anywhere
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m \u202egnp.exe [bold]x[/bold] [link=http://e]y[/link]"
NOW = 1_764_000_000.0


def peer(key: str, nickname: str, **kw: Any) -> PeerInfo:
    return PeerInfo(key=key, fingerprint=fingerprint(bytes.fromhex(key)), nickname=nickname,
                    addresses=("127.0.0.1:4000",), state="verified", last_seen=NOW, **kw)


class StubNode:
    """Request sockets of a node home, answered by ``handlers[service][RequestType]``."""

    def __init__(self, home: Path, *, bus: bool = False,
                 extra: dict[str, dict[type, Callable[[Any], Any]]] | None = None) -> None:
        self.home = home
        self.config = load_from_env({"TAZCOM_HOME": str(home)})
        self.config.paths.run.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.policy: dict[str, rpc.PolicyEntry] = {}
        self.posts: list[rpc.Post] = []
        self.refuse_post: RequestFailed | None = None
        self.history: tuple[rpc.HistoryEntry, ...] = ()
        # files: what files.send / files.get answer, what files.list answers call after
        # call (the last one repeats), and what the bus carries after files.send
        self.file_requests: list[rpc.Request] = []
        self.refuse_file: RequestFailed | None = None
        self.file_answer: FileStatus | None = None
        self.file_lists: list[tuple[FileStatus, ...]] = [()]
        self.lists = 0
        self.bus_rows: list[FileStatus] = []
        self.with_bus = bus
        self.handlers: dict[str, dict[type, Callable[[Any], Any]]] = {
            "identity": {rpc.GetIdentity: lambda _r: rpc.IdentityInfo(
                key=ME, fingerprint=fingerprint(bytes.fromhex(ME)), nickname="me")},
            "discovery": {rpc.GetPeers: lambda _r: rpc.PeerSnapshot(epoch=1, seq=1, peers=(
                peer(BOB, "[bold]bob[/bold]", alert=f"key changed {HOSTILE}"),))},
            "router": {
                rpc.GetMesh: lambda _r: rpc.MeshTable(epoch=1, seq=1, items=(rpc.MeshEntry(
                    key=FAR, nickname="faraway", hops=3, enc_key="ee" * 32),)),
                rpc.GetPolicy: lambda _r: self.table(),
                rpc.SetPolicy: self.set_policy,
                rpc.GetScores: lambda _r: rpc.Scores(items=(
                    rpc.ScoreEntry(key=BOB, score=-12.5, banned_until=None),)),
                rpc.Post: self.post,
                rpc.SendFile: self.file_request,
                rpc.GetFile: self.file_request,
                rpc.ListFiles: self.list_files,
            },
            "store": {rpc.StoreHistory: lambda _r: rpc.History(messages=self.history)},
            "bus": {rpc.GetStatus: lambda _r: rpc.StatusReport(epoch=1, seq=1, services=tuple(
                ServiceHealth(service=s, state="up", pid=1) for s in self.config.services))},
        }
        for service, handlers in (extra or {}).items():
            self.handlers.setdefault(service, {}).update(handlers)
        self.silent: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def table(self) -> rpc.PolicyTable:
        return rpc.PolicyTable(epoch=1, seq=len(self.policy), items=tuple(self.policy.values()))

    def set_policy(self, req: rpc.SetPolicy) -> rpc.PolicyTable:
        if req.key == ME:
            raise RequestFailed("that is this node's own key", code="bad_recipient")
        if req.remove:
            if req.key not in self.policy or self.policy[req.key].policy != req.policy:
                raise RequestFailed(f"{req.key[:16]} is not {req.policy.rstrip('e')}ed here",
                                    code="not_found")
            del self.policy[req.key]
        else:
            self.policy[req.key] = rpc.PolicyEntry(key=req.key, policy=req.policy, since=NOW,
                                                   reason="by the user")
        return self.table()

    def post(self, req: rpc.Post) -> rpc.PostResult:
        if self.refuse_post is not None:
            raise self.refuse_post
        self.posts.append(req)
        return rpc.PostResult(message_id=b"\x01" * 16, status="queued")

    def file_request(self, req: rpc.Request) -> Any:
        self.file_requests.append(req)
        if self.refuse_file is not None:
            raise self.refuse_file
        assert self.file_answer is not None
        if self.bus_rows:
            return self._answer_then_publish()
        return rpc.FileAnswer(file=self.file_answer)

    async def _answer_then_publish(self) -> rpc.FileAnswer:
        # the CLI subscribes before it asks: once its subscription reached the bus, every
        # row published after the answer reaches it
        await self._subscribed.wait()
        rows = list(self.bus_rows)
        asyncio.get_running_loop().call_soon(lambda: [
            self._xpub.send_multipart(encode_event(r)) for r in rows])
        return rpc.FileAnswer(file=self.file_answer)

    def list_files(self, req: rpc.ListFiles) -> rpc.FileTable:
        self.lists += 1
        return rpc.FileTable(files=self.file_lists[min(self.lists, len(self.file_lists)) - 1])

    async def _bus(self, ctx: zmq.asyncio.Context) -> None:
        """The bus's subscriber side: a welcome on connect, and ``_subscribed`` set once
        a subscription to ``file.status`` came in."""
        self._xpub = ctx.socket(zmq.XPUB)
        self._xpub.setsockopt(zmq.LINGER, 0)
        self._xpub.setsockopt(zmq.XPUB_WELCOME_MSG, b"bus.welcome")
        self._xpub.bind(bus_out(self.config))
        while True:
            msg = await self._xpub.recv()
            if msg == b"\x01" + FileStatus.TOPIC.encode():
                self._subscribed.set()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        ctx = zmq.asyncio.Context()
        servers = []
        self._subscribed = asyncio.Event()

        def answer(service: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def handler(req: Any) -> Any:
                if service in self.silent:
                    return asyncio.get_running_loop().create_future()  # never answered
                return fn(req)
            return handler

        async def serve() -> None:
            for service, handlers in self.handlers.items():
                servers.append(RpcServer(ctx, self.config, service, {
                    t: answer(service, fn) for t, fn in handlers.items()}))
            tasks = [asyncio.ensure_future(server.serve_forever()) for server in servers]
            if self.with_bus:
                tasks.append(asyncio.ensure_future(self._bus(ctx)))
            self._ready.set()
            try:
                await asyncio.gather(*tasks)  # holds them: a task nobody holds may be collected
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        self._main = self._loop.create_task(serve())
        try:
            self._loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            pass  # closed
        finally:
            for server in servers:
                server.close()
            if self.with_bus:
                self._xpub.close(linger=0)
            ctx.destroy(linger=0)
            self._loop.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._main.cancel)
        self._thread.join(5)


@pytest.fixture
def node() -> Iterator[StubNode]:
    home = short_tmp()
    stub = StubNode(home)
    yield stub
    stub.close()


@pytest.fixture
def bus_node() -> Iterator[StubNode]:
    """A stub node whose bus carries the rows of files.send."""
    stub = StubNode(short_tmp(), bus=True)
    yield stub
    stub.close()
    shutil.rmtree(stub.home, ignore_errors=True)


def tazcom(node: StubNode, capsys: pytest.CaptureFixture[str], *args: str
           ) -> tuple[int, str, str]:
    code = cli.main([*args, "--home", str(node.home)])
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def harmless(text: str) -> None:
    """Nothing a terminal would act on: no C0 but newline, no DEL or C1, no bidi control."""
    bad = [ch for ch in text if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F
           or 0x202A <= ord(ch) <= 0x202E or 0x2066 <= ord(ch) <= 0x2069]
    assert not bad, f"raw controls reach the terminal: {bad!r} in {text!r}"


# -- block and mute ---------------------------------------------------------------------------


def test_block_by_nickname_list_and_remove(node: StubNode, capsys) -> None:
    code, out, _ = tazcom(node, capsys, "block", "[BOLD]bob[/bold]")  # nicknames: any case
    assert code == 0
    assert out.startswith("blocked [bold]bob[/bold] (") and "block --remove" in out
    assert node.policy[BOB].policy == "block"
    code, out, _ = tazcom(node, capsys, "block", "--list", "--json")
    assert rows(out) == [{"key": BOB, "fingerprint": fingerprint(bytes.fromhex(BOB)),
                          "nickname": "[bold]bob[/bold]", "policy": "block", "since": NOW,
                          "until": None, "reason": "by the user"}]
    code, out, _ = tazcom(node, capsys, "mute", "--list")
    assert (code, out) == (0, "nobody is muted here\n")
    code, out, _ = tazcom(node, capsys, "block", "--remove", "[bold]bob[/bold]", "--json")
    assert code == 0 and rows(out)[0]["policy"] is None and rows(out)[0]["key"] == BOB
    assert node.policy == {}


def test_block_and_mute_reach_mesh_only_and_never_seen_keys(node: StubNode, capsys) -> None:
    code, out, _ = tazcom(node, capsys, "mute", "faraway", "--json")
    assert code == 0 and rows(out)[0]["nickname"] == "faraway"
    assert node.policy[FAR].policy == "mute"
    code, out, _ = tazcom(node, capsys, "block", NEVER.upper())
    assert code == 0 and f"key {NEVER[:16]}" in out
    assert node.policy[NEVER].policy == "block"
    code, out, _ = tazcom(node, capsys, "block", "--list")
    assert code == 0 and "?" in out and fingerprint(bytes.fromhex(NEVER)) in out
    code, out, _ = tazcom(node, capsys, "mute", "--list", "--json")
    assert [r["key"] for r in rows(out)] == [FAR]


def test_block_arguments_and_refusals(node: StubNode, capsys) -> None:
    for args in (("block",), ("block", "--list", "bob"), ("mute", "--remove"),
                 ("block", "--list", "--remove", "bob")):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*args, "--home", str(node.home)])
        assert exit_.value.code == cli.EXIT_USAGE
        capsys.readouterr()
    code, _, err = tazcom(node, capsys, "block", "nobody-at-all")
    assert code == cli.EXIT_USAGE and "no peer matches" in err
    harmless(err)
    code, _, err = tazcom(node, capsys, "mute", "--remove", "[bold]bob[/bold]")
    assert code == cli.EXIT_ERROR and "not_found" in err and "not muted" in err
    code, _, err = tazcom(node, capsys, "block", ME)
    assert code == cli.EXIT_ERROR and "bad_recipient" in err


# -- peers: the router's score ----------------------------------------------------------------


def test_peers_show_the_score_and_keep_every_field(node: StubNode, capsys) -> None:
    code, out, _ = tazcom(node, capsys, "peers", "--json")
    (row,) = rows(out)
    assert code == 0 and row["score"] == -12.5
    assert set(row) == {f.name for f in schema_fields(PeerInfo)} | {"score"}
    code, out, _ = tazcom(node, capsys, "peers")
    assert "SCORE" in out.splitlines()[0] and "-12.5" in out
    node.silent.add("router")  # no scores: null, no column, and still the peers
    code, out, _ = tazcom(node, capsys, "peers", "--json")
    assert code == 0 and rows(out)[0]["score"] is None


# -- posts refused by our router -------------------------------------------------------------


@pytest.mark.parametrize("code_", ["rate_limited", "blocked"])
def test_refused_post_is_an_error(node: StubNode, capsys, code_: str) -> None:
    node.refuse_post = RequestFailed("over 2 messages/s; try again in 4 s", code=code_)
    code, out, err = tazcom(node, capsys, "say", "hello", "--json")
    assert code == cli.EXIT_ERROR and out == ""
    assert err.startswith(f"tazcom: {code_}: not sent") and "try again in 4 s" in err


# -- history: arrival order, claimed time, exact JSON, harmless text ---------------------------


def entry(n: int, *, ts: float, received: float | None, text: str = "hi") -> rpc.HistoryEntry:
    return rpc.HistoryEntry(id=bytes([n]) * 16, kind=1, origin=bytes.fromhex(BOB), to=None,
                            ts=int(ts * 1000), text=text, status="",
                            received=None if received is None else int(received * 1000))


def test_history_shows_arrival_and_claimed_time(node: StubNode, capsys) -> None:
    node.history = (entry(1, ts=NOW, received=NOW + 1),
                    entry(2, ts=NOW + 540, received=NOW + 2, text=HOSTILE),
                    entry(3, ts=NOW + 3, received=None))
    code, out, _ = tazcom(node, capsys, "history")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW + 1)))
    assert "claimed" not in lines[0] and "claimed" not in lines[2]
    claimed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW + 540))
    assert lines[1].endswith(f"(claimed {claimed})")
    assert "[bold]bob[/bold]: \\x1b[2J\\x1b]0;owned\\x07\\x9b31m \\u202egnp.exe" in lines[1]
    harmless(out)
    code, out, _ = tazcom(node, capsys, "history", "--json")
    got = rows(out)
    assert [r["received"] for r in got] == [NOW + 1, NOW + 2, None]
    assert got[1]["ts"] == NOW + 540 and got[1]["text"] == HOSTILE  # exact, JSON-escaped
    harmless(out)


def test_a_silent_store_is_an_error_not_an_empty_history(node: StubNode, capsys) -> None:
    node.silent.add("store")
    started = time.monotonic()
    code, out, err = tazcom(node, capsys, "history")  # not "no messages yet"
    assert code == cli.EXIT_NOT_RUNNING and out == ""
    assert "store did not answer store.history within 1.5 s" in err and "busy" in err
    assert time.monotonic() - started < 4.5


def test_peer_text_is_harmless_in_peers_and_errors(node: StubNode, capsys) -> None:
    code, out, _ = tazcom(node, capsys, "peers", "[bold]bob[/bold]")
    assert code == 0 and "[bold]bob[/bold]" in out and "\\x1b]0;owned\\x07" in out
    harmless(out)
    code, out, _ = tazcom(node, capsys, "peers", "[bold]bob[/bold]", "--json")
    assert rows(out)[0]["alert"] == f"key changed {HOSTILE}"
    harmless(out)


#: The positional arguments each subcommand needs (or none).
NEEDS = {"trust": ["bob"], "say": ["hi"], "send": ["bob", "hi"], "block": ["bob"],
         "mute": ["bob"], "connect": ["10.0.0.1"], "join": ["TZ1AAAA"],
         "send-file": ["bob", "photo.jpg"], "share": ["photo.jpg"], "files get": ["abcd"]}


@pytest.mark.parametrize("command", sorted([*cli.COMMANDS, "chat", "files get"]))
@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_work_before_and_after_the_command(command: str, where: str) -> None:
    """``tazcom --home DIR status`` once acted on the default node (issue 14): every
    global option counts wherever it is placed, and a later one wins."""
    parser = cli.build_parser()
    rest = [*command.split(), *NEEDS.get(command, [])]
    opts = ["--home", "/tmp/elsewhere", "--json"]
    args = parser.parse_args(opts + rest if where == "before" else rest + opts)
    assert (args.home, args.json) == ("/tmp/elsewhere", True)
    plain = parser.parse_args(rest)
    assert (plain.home, plain.json) == (None, False)
    both = parser.parse_args(["--home", "/a", *rest, "--home", "/b"])
    assert both.home == "/b"


# -- files: send-file, share, files, files get ---------------------------------------------

FILE_ID = "f1" * 16
FILE_HASH = "ab" * 32


def frow(status: str, *, done: int = 0, to: str | None = BOB, direction: str = "out",
         name: str = "photo.jpg", size: int = 4096, path: str = "/tmp/photo.jpg",
         reason: str = "", origin: str | None = None, file_id: str = FILE_ID) -> FileStatus:
    return FileStatus(src="router", ts=NOW, id=file_id, name=name, size=size,
                      mime="image/jpeg", hash=FILE_HASH,
                      origin=origin or (ME if direction == "out" else BOB), to=to,
                      direction=direction, status=status, reason=reason, done=done,
                      path=path, sent=int(NOW * 1000))


FILE_KEYS = {"id", "name", "size", "from", "to", "hash", "status", "done", "path",
             "direction", "mime", "reason", "sent"}


def test_send_file_follows_the_file_until_delivered(node: StubNode, capsys, tmp_path,
                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(b"x" * 4096)
    node.file_answer = frow("queued")
    # no bus here: the CLI polls files.list, which moves one step per call
    node.file_lists = [(frow("sent"),), (frow("sent", done=2048),),
                       (frow("delivered", done=4096),)]
    code, out, err = tazcom(node, capsys, "send-file", "[bold]bob[/bold]", "photo.jpg",
                            "--json")
    assert (code, err) == (0, "")
    (req,) = node.file_requests
    assert isinstance(req, rpc.SendFile) and req.to == bytes.fromhex(BOB)
    assert req.path == str(tmp_path / "photo.jpg")  # absolute: the router reads it
    got = rows(out)
    assert [r["status"] for r in got] == ["queued", "sent", "sent", "delivered"]
    assert [r["done"] for r in got] == [0, 0, 2048, 4096]
    assert all(set(r) == FILE_KEYS for r in got)
    assert got[0] | {"status": "queued"} == got[0] and got[0]["from"] == ME
    assert got[0]["to"] == BOB and got[0]["hash"] == FILE_HASH and got[0]["id"] == FILE_ID


def test_share_returns_once_sent_and_says_so_for_people(node: StubNode, capsys) -> None:
    node.file_answer = frow("queued", to=None)
    node.file_lists = [(frow("sent", to=None),), (frow("relayed", to=None, done=4096),)]
    code, out, _ = tazcom(node, capsys, "share", "~/photo.jpg")  # not a terminal: lines
    assert code == 0
    (req,) = node.file_requests
    assert req.to is None and req.path == str(Path("~/photo.jpg").expanduser())
    assert out.splitlines() == ["photo.jpg: queued", "photo.jpg: sent",
                                "to the room: sent (file f1f1f1f1f1f1, photo.jpg, 4.0 KiB)"]
    assert node.lists == 1  # sent is the end for a room file


def test_share_wait_waits_until_every_byte_was_fetched(node: StubNode, capsys) -> None:
    node.file_answer = frow("queued", to=None)
    node.file_lists = [(frow("sent", to=None, done=1024),),
                       (frow("relayed", to=None, done=4096),)]
    code, out, _ = tazcom(node, capsys, "share", "/tmp/photo.jpg", "--wait", "--json")
    assert code == 0 and [r["done"] for r in rows(out)] == [0, 1024, 4096]
    assert rows(out)[-1]["to"] == "*"


def test_send_file_progress_bar_on_a_terminal(node: StubNode, capsys, monkeypatch) -> None:
    node.file_answer = frow("queued")
    node.file_lists = [(frow("sent", done=1024),), (frow("delivered", done=4096),)]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = tazcom(node, capsys, "send-file", BOB[:16], "/tmp/photo.jpg")
    assert code == 0
    assert out.startswith("photo.jpg: hashing and encrypting...\r")  # until the answer
    drawn = [d for d in out.split("\r") if d.strip()][1:]  # each state over the last
    assert drawn[0].startswith("photo.jpg [--------------------]   0%  0 B/4.0 KiB  -  ")
    assert any("[#####---------------]  25%  1.0 KiB/4.0 KiB" in d for d in drawn)
    assert "100%" in drawn[-1] and "delivered" in drawn[-1]
    assert out.endswith("to [bold]bob[/bold] (" + fingerprint(bytes.fromhex(BOB))
                        + "): delivered (file f1f1f1f1f1f1, photo.jpg, 4.0 KiB)\n")


def test_send_file_follows_the_bus(bus_node: StubNode, capsys) -> None:
    bus_node.file_answer = frow("queued")
    bus_node.bus_rows = [frow("sent", done=1024), frow("delivered", done=4096)]
    bus_node.file_lists = [(frow("queued"),)]  # stale: only the bus can end this quickly
    started = time.monotonic()
    code, out, _ = tazcom(bus_node, capsys, "send-file", BOB[:16], "/tmp/photo.jpg", "--json",
                          "--timeout", "10")
    assert code == 0 and rows(out)[-1]["status"] == "delivered"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("refusal", "said"), [
    ("not_found", "tazcom: not_found: no such file: /tmp/nope"),
    ("too_large", "tazcom: too_large: too large: /tmp/nope"),
    ("no_key", "tazcom: no_key: no DM key for the recipient yet"),
])
def test_send_file_refused(node: StubNode, capsys, refusal: str, said: str) -> None:
    node.refuse_file = RequestFailed("/tmp/nope", code=refusal)
    code, out, err = tazcom(node, capsys, "send-file", BOB[:16], "/tmp/nope", "--json")
    assert code == cli.EXIT_ERROR and out == ""
    assert err.startswith(said) and err.count("\n") == 1


def test_send_file_failed_or_timed_out_is_an_error(node: StubNode, capsys) -> None:
    node.file_answer = frow("queued")
    node.file_lists = [(frow("failed", reason="recipient refused it"),)]
    code, out, err = tazcom(node, capsys, "send-file", BOB[:16], "/tmp/photo.jpg")
    assert code == cli.EXIT_ERROR
    assert err == "tazcom: failed: photo.jpg to [bold]bob[/bold] (" + fingerprint(
        bytes.fromhex(BOB)) + "): recipient refused it\n"
    node.lists = 0
    node.file_lists = [(frow("sent"),)]  # the peer is offline: never delivered
    code, out, err = tazcom(node, capsys, "send-file", BOB[:16], "/tmp/photo.jpg", "--timeout",
                            "0.5", "--json")
    assert code == cli.EXIT_ERROR and rows(out)[-1]["status"] == "sent"
    assert err.startswith("tazcom: timeout: photo.jpg to ") and "still sent after 0.5 s" in err


def test_send_file_no_wait(node: StubNode, capsys) -> None:
    node.file_answer = frow("queued")
    code, out, _ = tazcom(node, capsys, "send-file", BOB[:16], "/tmp/photo.jpg", "--no-wait")
    assert code == 0 and node.lists == 0
    assert out.startswith("to [bold]bob[/bold] (") and "queued (file f1f1f1f1f1f1" in out


def test_files_lists_with_names_sizes_and_progress(node: StubNode, capsys) -> None:
    stranger = "5e" * 32
    node.file_lists = [(
        frow("receiving", direction="in", to=ME, done=1536, path="", name=HOSTILE),
        frow("offered", direction="in", to=None, origin=stranger, size=3 * 2**20, path="",
             file_id="e2" * 16),
        frow("delivered", file_id="d3" * 16),
    )]
    code, out, _ = tazcom(node, capsys, "files")
    assert code == 0
    head, first, second, third = out.splitlines()
    assert head.split() == ["ID", "NAME", "SIZE", "FROM", "TO", "HASH", "STATUS", "PATH"]
    assert "receiving 37%" in first and "[bold]bob[/bold]" in first and " me " in first
    assert fingerprint(bytes.fromhex(stranger)) in second and "3.0 MiB" in second
    assert " room " in second and "offered" in second
    assert third.split() == ["d3d3d3d3d3d3", "photo.jpg", "4.0", "KiB", "me", "[bold]bob[/bold]",
                             "abababababab", "delivered", "/tmp/photo.jpg"]
    harmless(out)
    code, out, _ = tazcom(node, capsys, "files", "--json")
    got = rows(out)
    assert [set(r) for r in got] == [FILE_KEYS] * 3
    assert got[0]["name"] == HOSTILE and got[1]["to"] == "*" and got[1]["from"] == stranger
    assert got[0]["sent"] == NOW
    harmless(out)


def test_files_get(node: StubNode, capsys) -> None:
    node.file_answer = frow("receiving", direction="in", to=None, path="")
    code, out, _ = tazcom(node, capsys, "files", "get", "F1F1", "--json")  # no wait: a pipe
    assert code == 0 and [r["status"] for r in rows(out)] == ["receiving"]
    assert node.file_requests[-1] == rpc.GetFile(file="f1f1") and node.lists == 0
    node.file_lists = [(frow("receiving", direction="in", to=None, done=2048, path=""),),
                       (frow("received", direction="in", to=None, done=4096,
                             path="/home/x/files/photo.jpg"),)]
    code, out, _ = tazcom(node, capsys, "files", "get", "f1f1", "--wait")
    assert code == 0
    assert out.splitlines()[-1] == "received photo.jpg (4.0 KiB): /home/x/files/photo.jpg"
    code, _, err = tazcom(node, capsys, "files", "get", "xyz")
    assert code == cli.EXIT_USAGE and "4 to 64 hex digits" in err


# -- the pure parts ---------------------------------------------------------------------


def test_human_size_and_eta() -> None:
    assert [cli.human_size(n) for n in (0, 1023, 1024, 1536, 2**20 - 1, 5 * 2**30, 2**50)] \
        == ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "1.0 MiB", "5.0 GiB", "1.0 PiB"]
    assert [cli.eta_text(s) for s in (None, 0, 7.4, 750, 3723, float("nan"), 1e9)] \
        == ["--:--", "0:00", "0:07", "12:30", "1:02:03", "--:--", "--:--"]


def test_progress_line_fits_and_says_everything() -> None:
    line = cli.progress_line("holiday photo.jpg", 2**20, 4 * 2**20, "receiving", 2**19, 100)
    assert line.startswith("holiday photo.jpg [#####---------------]  25%  1.0 MiB/4.0 MiB")
    assert "512.0 KiB/s  ETA 0:06  receiving" in line
    long = cli.progress_line("x" * 300 + "\x1b[2J", 0, 10, "queued", None, 80)
    assert len(long) == 80 and "..." in long and "ETA --:--" in long and "\x1b" not in long
    assert "100%" in cli.progress_line("empty", 0, 0, "sent", None)
    assert " 99%" in cli.progress_line("big", 999, 1000, "receiving", 10.0)


def test_rate_meter() -> None:
    meter = cli.RateMeter(window=5.0)
    assert meter.rate(0.0) is None
    for t in range(11):
        meter.add(float(t), t * 1000)
    assert meter.rate(10.0) == pytest.approx(1000.0)
    assert meter.rate(15.0) == pytest.approx(0.0)  # stalled for a whole window
    assert meter.rate(12.5) == pytest.approx(500.0)  # half of the window without news
    meter.add(11.0, 0)  # started again: no rate from the old count
    assert meter.rate(11.0) is None


def test_file_finished_and_status_text() -> None:
    def done(f: FileStatus, wait_room: bool = False) -> bool:
        return cli.file_finished(f, wait_room=wait_room)

    assert not done(frow("sent", done=4096)) and done(frow("delivered"))
    assert done(frow("failed", reason="x")) and done(frow("failed", to=None))
    assert not done(frow("queued", to=None)) and done(frow("sent", to=None))
    assert not done(frow("sent", to=None, done=10), True)
    assert done(frow("relayed", to=None, done=4096), True)
    assert not done(frow("receiving", direction="in", done=4096))
    assert done(frow("received", direction="in", done=4096))
    assert cli.file_status_text(frow("receiving", direction="in", done=1000)) == "receiving 24%"
    assert cli.file_status_text(frow("sent", done=2048)) == "sent, 50% fetched"
    assert cli.file_status_text(frow("failed", reason="disk full")) == "failed: disk full"
    assert cli.file_status_text(frow("delivered", done=4096)) == "delivered"


def test_file_row_is_the_whole_row_in_json() -> None:
    row = json.loads(cli.json_line(cli.file_row(frow("received", direction="in", to=None,
                                                      name=HOSTILE, done=4096))))
    assert row == {"id": FILE_ID, "name": HOSTILE, "size": 4096, "from": BOB, "to": "*",
                   "hash": FILE_HASH, "status": "received", "done": 4096,
                   "path": "/tmp/photo.jpg", "direction": "in", "mime": "image/jpeg",
                   "reason": "", "sent": NOW}
    assert cli.file_row(frow("queued"))["to"] == BOB
    bare = FileStatus(src="router", ts=NOW, id=FILE_ID, name="a", size=1, hash=FILE_HASH,
                      origin=ME, direction="out", status="queued")
    assert cli.file_row(bare)["sent"] is None
