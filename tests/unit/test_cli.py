"""``tazcom`` against stub services: block and mute, scores in peers, history by arrival,
refused posts, a silent store, and peer text printed harmlessly.

The stubs are real ``RpcServer`` sockets in a node home of their own (a thread runs
their event loop): the CLI talks to them exactly as to a node, nothing else runs.
"""

from __future__ import annotations

import asyncio
import json
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
from tazcom.common.events import PeerInfo, ServiceHealth
from tazcom.common.keys import fingerprint
from tazcom.common.schema import fields as schema_fields
from tazcom.services.busclient import RpcServer
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

    def __init__(self, home: Path) -> None:
        self.home = home
        self.config = load_from_env({"TAZCOM_HOME": str(home)})
        self.config.paths.run.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.policy: dict[str, rpc.PolicyEntry] = {}
        self.posts: list[rpc.Post] = []
        self.refuse_post: RequestFailed | None = None
        self.history: tuple[rpc.HistoryEntry, ...] = ()
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
            },
            "store": {rpc.StoreHistory: lambda _r: rpc.History(messages=self.history)},
            "bus": {rpc.GetStatus: lambda _r: rpc.StatusReport(epoch=1, seq=1, services=tuple(
                ServiceHealth(service=s, state="up", pid=1) for s in self.config.services))},
        }
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

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        ctx = zmq.asyncio.Context()
        servers = []

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
         "mute": ["bob"], "connect": ["10.0.0.1"], "join": ["TZ1AAAA"]}


@pytest.mark.parametrize("command", sorted([*cli.COMMANDS, "chat"]))
@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_work_before_and_after_the_command(command: str, where: str) -> None:
    """``tazcom --home DIR status`` once acted on the default node (issue 14): every
    global option counts wherever it is placed, and a later one wins."""
    parser = cli.build_parser()
    rest = [command, *NEEDS.get(command, [])]
    opts = ["--home", "/tmp/elsewhere", "--json"]
    args = parser.parse_args(opts + rest if where == "before" else rest + opts)
    assert (args.home, args.json) == ("/tmp/elsewhere", True)
    plain = parser.parse_args(rest)
    assert (plain.home, plain.json) == (None, False)
    both = parser.parse_args(["--home", "/a", *rest, "--home", "/b"])
    assert both.home == "/b"
