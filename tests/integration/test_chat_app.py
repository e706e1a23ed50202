"""The chat app against real nodes: Textual's run_test()/Pilot, and a real terminal (tmux)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tazcom.chat import ROOM, ChatApp, MessageView
from tazcom.services.runtime import load_from_env
from tests.harness import BULK, Node, tool, wait_for


async def until(pilot, predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


def texts(app: ChatApp) -> list[str]:
    return [m.text for m in app.query_one(MessageView).messages]


def run(scenario: Callable[..., Awaitable[None]], node: Node) -> None:
    async def main() -> None:
        app = ChatApp(load_from_env(node.env))
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.ready_at is not None, 20, "the app to load")
            await scenario(app, pilot)

    asyncio.run(main())


def test_send_receive_switch_and_commands(pair: tuple[Node, Node]) -> None:
    a, b = pair

    async def scenario(app: ChatApp, pilot) -> None:
        # send to the room: it reaches bob's node
        await pilot.press(*"hello from the app", "enter")
        wait_for(lambda: any("hello from the app" in line for line in
                             b.cli("history").stdout.splitlines()), 10, "the message at bob")
        await until(pilot, lambda: any(m.text == "hello from the app" and m.status == "sent"
                                       for m in app.query_one(MessageView).messages), 10,
                    "our own message with its live status")
        # receive one from the second node
        b.cli("say", "hi alice, bob here")
        await until(pilot, lambda: "hi alice, bob here" in texts(app), 10, "bob's message")
        # switch to the conversation with bob, and DM him
        bob_key = b.key
        await until(pilot, lambda: bob_key in app.peers, 10, "bob in the peer list")
        while app.current != bob_key:
            await pilot.press("ctrl+n")
        await pilot.press(*"a private word", "enter")
        wait_for(lambda: "a private word" in b.cli("history", "alice").stdout, 10,
                 "the DM at bob")
        await until(pilot, lambda: any(m.text == "a private word" and m.status == "delivered"
                                       for m in app.query_one(MessageView).messages), 15,
                    "the DM delivered (receipt) in place")
        await pilot.press("ctrl+p")
        await until(pilot, lambda: app.current == ROOM, 5, "back in the room")
        # unread count for a conversation that is not open
        b.cli("send", "alice", "are you there?")
        await until(pilot, lambda: app.unread.get(bob_key) == 1, 10, "an unread count")
        # commands
        await pilot.press(*"/whois bob", "enter")
        await until(pilot, lambda: any("safety number" in t for t in texts(app)), 5,
                    "/whois output")
        await pilot.press(*"/peers", "enter")
        await until(pilot, lambda: any(t.startswith("bob ") for t in texts(app)), 5,
                    "/peers output")
        await pilot.press(*"/msg bob direct via command", "enter")
        await until(pilot, lambda: app.current == bob_key, 5, "/msg opens the conversation")
        wait_for(lambda: "direct via command" in b.cli("history", "alice").stdout, 10,
                 "the /msg at bob")
        await pilot.press(*"/bogus", "enter")
        await until(pilot, lambda: any("unknown command" in t for t in texts(app)), 5,
                    "an unknown command refused")
        # Tab completes nicknames
        await pilot.press("b", "tab")
        assert app.query_one("#input").value == "bob: "
        await pilot.press("ctrl+u")
        # /nick changes our nickname, seen by bob's node
        await pilot.press(*"/nick alice2", "enter")
        await until(pilot, lambda: app.me is not None and app.me.nickname == "alice2", 5,
                    "the new nickname")
        wait_for(lambda: "alice2" in b.peers(), 15, "bob to see the new nickname")
        await pilot.press(*"/nick alice", "enter")
        await until(pilot, lambda: app.me is not None and app.me.nickname == "alice", 5,
                    "the old nickname back")

    run(scenario, a)


def test_status_bar_follows_restarts_and_the_node_going_away(make_node) -> None:
    n = make_node("carol").start().wait_up()

    def status(app: ChatApp) -> str:
        return str(app.query_one("#status").render())

    async def scenario(app: ChatApp, pilot) -> None:
        assert "node up" in status(app)
        n.ctl("stop", "tazcom:router")
        await until(pilot, lambda: "router" in status(app), 10, "router shown as restarting")
        n.ctl("start", "tazcom:router")
        await until(pilot, lambda: "node up" in status(app), 15, "back up")
        n.stop()
        await until(pilot, lambda: "not running" in status(app), 10, "node down shown")
        n.start()
        await until(pilot, lambda: "node up" in status(app), 30, "recovered by itself")
        await pilot.press(*"after the restart", "enter")
        await until(pilot, lambda: "after the restart" in texts(app), 10,
                    "posting works again")

    run(scenario, n)


def test_thousands_of_messages_scroll(make_node) -> None:
    # posts 3,000 (limits raised), on a service type of its own: the module's pair of
    # nodes, with the limits for people, would take it for a flooder and ban it
    alone = BULK + '[discovery]\nservice_type = "_tazcomscroll._tcp.local."\n'
    n = make_node("dora", config=alone).start().wait_up()
    from tazcom.common import rpc
    from tests.harness import request

    for i in range(0, 3000, 500):
        asyncio.run(_post_many(n, [f"message {j}" for j in range(i, i + 500)]))

    async def scenario(app: ChatApp, pilot) -> None:
        view = app.query_one(MessageView)
        await until(pilot, lambda: len(view.messages) >= 3000, 20, "3000 messages loaded")
        assert view.scroll_y == view.max_scroll_y  # opens at the newest
        start = time.monotonic()
        for _ in range(40):
            await pilot.press("pageup")
        assert view.scroll_y < view.max_scroll_y
        assert time.monotonic() - start < 20
        assert request(n, "router", rpc.GetRouterStats()).posted >= 3000

    run(scenario, n)


async def _post_many(node: Node, texts_: list[str]) -> None:
    from bench.meshlab import post_many

    await post_many(node, texts_)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="the terminal test needs tmux")
def test_real_terminal_two_nodes(pair: tuple[Node, Node]) -> None:
    a, b = pair
    session = f"tzchat{int(time.time() * 1000) % 100000}"
    env = " ".join(f"{k}={v}" for k, v in a.env.items() if k.startswith("TAZCOM_"))
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    f"env {env} {a.run(['which', 'tazcom']).stdout.strip()} chat"], check=True)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"],
                                  capture_output=True, text=True).stdout

        wait_for(lambda: "node up" in screen(), 20, "the app on screen")
        subprocess.run(["tmux", "send-keys", "-t", session, "typed in a real terminal",
                        "Enter"], check=True)
        wait_for(lambda: "typed in a real terminal" in b.cli("history").stdout, 10,
                 "the typed message in bob's history")
        b.cli("say", "and a reply from bob")
        wait_for(lambda: "and a reply from bob" in screen(), 10, "the reply on screen")
        assert "# room" in screen()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


# -- safe among strangers (issue 12) -------------------------------------------------------

#: A nickname of markup (nicknames are printable: no escapes) and a text of escapes.
EVIL_NICK = "[b]eve[/b][link=x]y[/link]"
HOSTILE = ("\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b1m \u202egnp.exe\u2069 "
           "[bold]x[/bold] [link=http://e.vil]click[/link] 日本 👩‍👩‍👧")
ESCAPED = ("\\x1b[2J\\x1b]0;owned\\x07\\x1b[31mred\\x9b1m \\u202egnp.exe\\u2069 "
           "[bold]x[/bold] [link=http://e.vil]click[/link] 日本 👩‍👩‍👧")


def harmless(text: str) -> None:
    bad = [ch for ch in text if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F
           or 0x202A <= ord(ch) <= 0x202E or 0x2066 <= ord(ch) <= 0x2069]
    assert not bad, f"raw controls reach the terminal: {bad!r} in {text!r}"


def stored(node: Node, text: str) -> bool:
    """``text`` is in the node's store (history leaves out what is muted)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(node.home / "store.sqlite")) as db:
        return bool(db.execute("SELECT 1 FROM messages WHERE text = ?", (text,)).fetchone())


def screen_lines(app: ChatApp) -> list[str]:
    """What the message view draws: the text of its rendered strips."""
    return ["".join(seg.text for seg in strip) for strip in app.query_one(MessageView)._lines]


def test_strangers_text_is_shown_harmlessly_and_block_mute_hide_it(make_node) -> None:
    # a service type of their own: the module's pair must not be heard by ann or eve
    own = '[discovery]\nservice_type = "_tazcomevil._tcp.local."\n'
    ann = make_node("ann", config="[router]\nroom_rate = 0.05\nroom_burst = 3\n" + own)
    eve = make_node("eve", env={"TAZCOM_NICK": EVIL_NICK}, config=own)
    ann.start()
    eve.start()
    ann.wait_up()
    eve.wait_up()
    ann.wait_peer(EVIL_NICK, ("verified",), timeout=20)
    tail = ann.popen([tool("tazcom"), "events", "--topic", "chat.message", "--count", "1",
                      "--timeout", "20", "--quiet"], stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    time.sleep(1.0)  # noqa: sleep-ok - the tail subscribes before eve speaks
    eve.cli("say", HOSTILE)
    events_out, _ = tail.communicate(timeout=30)
    # the CLI: events, history and peers print it escaped, markup literal
    assert ESCAPED in events_out
    harmless(events_out)
    history = wait_for(lambda: (out := ann.cli("history").stdout) and HOSTILE[:4] not in out
                       and ESCAPED in out and out, 10, "eve's text in ann's history")
    assert f"{EVIL_NICK}: {ESCAPED}" in history
    harmless(history)
    peers = ann.cli("peers").stdout
    assert EVIL_NICK in peers
    harmless(peers)
    assert ann.cli_json("history")[-1]["text"] == HOSTILE  # --json: the exact string

    async def scenario(app: ChatApp, pilot) -> None:
        view = app.query_one(MessageView)
        await until(pilot, lambda: HOSTILE in texts(app), 10, "eve's message in the app")
        lines = "\n".join(screen_lines(app))
        harmless(lines)
        drawn = "".join(lines.split())  # the text as wrapped, whitespace aside
        assert "".join(f"{EVIL_NICK}: {ESCAPED}".split()) in drawn
        listed = [str(o.prompt) for o in app.query_one("#conversations").options]
        assert any(f"● {EVIL_NICK[:14]} " in p for p in listed), listed  # shown as typed
        while app.current != eve.key:
            await pilot.press("ctrl+n")
        assert EVIL_NICK in str(app.query_one("#title").render())
        await pilot.press("ctrl+p")
        await until(pilot, lambda: app.current == ROOM, 5, "back in the room")
        # /mute: hidden from then on (still stored here); /unmute shows it again
        await pilot.press(*f"/mute {EVIL_NICK}", "enter")
        await until(pilot, lambda: any(t.startswith("muted ") for t in texts(app)), 10,
                    "the mute confirmed")
        await until(pilot, lambda: HOSTILE not in texts(app), 10, "eve's message hidden")
        eve.cli("say", "said while muted")
        wait_for(lambda: stored(ann, "said while muted"), 10, "the muted message stored")
        await pilot.pause(0.5)
        assert "said while muted" not in texts(app)
        await pilot.press(*f"/unmute {EVIL_NICK}", "enter")
        await until(pilot, lambda: "said while muted" in texts(app), 10, "shown again")
        # /block: nothing of eve's is shown; /unblock lifts it
        await pilot.press(*f"/block {eve.key[:12]}", "enter")
        await until(pilot, lambda: any(t.startswith("blocked ") for t in texts(app)), 10,
                    "the block confirmed")
        await until(pilot, lambda: not any(m.origin == eve.key for m in view.messages), 10,
                    "eve's messages hidden")
        assert [r["policy"] for r in ann.cli_json("block", "--list")] == ["block"]
        await pilot.press(*f"/unblock {EVIL_NICK}", "enter")
        await until(pilot, lambda: any(t.startswith("unblocked ") for t in texts(app)), 10,
                    "the block lifted")
        assert ann.cli_json("block", "--list") == []
        # over this node's own limit: refused, said so, and the text is kept
        box = app.query_one("#input")
        for i in range(10):
            await pilot.press(*f"burst {i}", "enter")
            await until(pilot, lambda i=i: f"burst {i}" in texts(app) or box.value, 10,
                        "the post answered")
            if box.value:
                break
        assert box.value == f"burst {i}", "a refused post keeps its text"
        assert any(t.startswith("NOT SENT (too many messages)") for t in texts(app))

    run(scenario, ann)


# -- files (docs/files.md) ---------------------------------------------------------------------


def test_a_dm_image_sent_with_file_is_delivered_and_shown_in_both_apps(make_node) -> None:
    # a service type of their own: the module's pair (and other loopback nodes) stay apart
    own = '[discovery]\nservice_type = "_tzchatfile._tcp.local."\n'
    a = make_node("fay", config=own).start()
    b = make_node("gus", config=own).start()
    a.wait_up()
    b.wait_up()
    a.wait_peer("gus", ("verified",), timeout=20)
    b.wait_peer("fay", ("verified",), timeout=20)
    from PIL import Image

    picture = a.home.parent / "tiny picture.png"
    Image.new("RGB", (7, 5), (200, 30, 90)).save(picture)
    original = picture.read_bytes()
    app_a = ChatApp(load_from_env(a.env))
    app_b = ChatApp(load_from_env(b.env))
    seen_a: list[str] = []  # every status of the file's line in fay's app, in order
    record = app_a.on_file_status

    def on_file_status_a(row) -> None:
        if not seen_a or seen_a[-1] != row.status:
            seen_a.append(row.status)
        record(row)

    app_a.on_file_status = on_file_status_a  # type: ignore[method-assign]
    started = asyncio.Event()  # fay sends once gus's app is up: it sees the file arrive
    finished = asyncio.Event()

    def line_of(app: ChatApp, name: str) -> str:
        """The file's line as the view draws it (its wrapped rows joined), or ""."""
        view = app.query_one(MessageView)
        for i, m in enumerate(view.messages):
            if m.file is not None and m.text == name:
                end = view._first_line[i + 1] if i + 1 < len(view._first_line) else None
                rows = ["".join(seg.text for seg in strip).rstrip()
                        for strip in view._lines[view._first_line[i]:end]]
                return " ".join(row.strip() for row in rows)
        return ""

    async def fay() -> None:
        async with app_a.run_test(size=(100, 24)) as pilot:
            await until(pilot, lambda: app_a.ready_at is not None, 20, "fay's app to load")
            await until(pilot, lambda: b.key in app_a.peers, 10, "gus in fay's peer list")
            while app_a.current != b.key:
                await pilot.press("ctrl+n")
            await until(pilot, started.is_set, 20, "gus's app to load")
            await pilot.press(*f'/file "{picture}"', "enter")
            await until(pilot, lambda: "delivered" in seen_a, 20,
                        "the file delivered (gus has every chunk)")
            assert seen_a[0] in ("queued", "sent"), seen_a
            assert "sent" in seen_a and seen_a.index("sent") < seen_a.index("delivered"), seen_a
            await until(pilot, lambda: "[delivered]" in line_of(app_a, picture.name), 5,
                        "the line drawn as delivered")
            line = line_of(app_a, picture.name)
            assert line.lstrip().split(" ", 1)[1].startswith("me: ⇡ tiny picture.png"), line
            assert "[image 7x5 tiny picture.png]" in line  # our own original is here
            await until(pilot, finished.is_set, 20, "gus's app to see it")

    async def gus() -> None:
        try:
            async with app_b.run_test(size=(100, 24)) as pilot:
                await until(pilot, lambda: app_b.ready_at is not None, 20, "gus's app to load")
                await until(pilot, lambda: a.key in app_b.peers, 10, "fay in gus's peers")
                started.set()
                # a DM file lands in fay's conversation, which is not open: an unread count
                await until(pilot, lambda: app_b.unread.get(a.key) == 1, 15,
                            "the file counted unread in fay's conversation")
                while app_b.current != a.key:
                    await pilot.press("ctrl+n")
                await until(pilot, lambda: "[received]" in line_of(app_b, picture.name), 20,
                            "the file received (fetched by itself: a small DM file)")
                line = line_of(app_b, picture.name)
                assert line.lstrip().split(" ", 1)[1].startswith("fay: ⇣ tiny picture.png"), line
                assert "[image 7x5 tiny picture.png]" in line, line
                (row,) = [r for r in app_b.files.values() if r.name == picture.name]
                assert row.direction == "in" and row.to == b.key and row.origin == a.key
                assert Path(row.path).read_bytes() == original
                assert Path(row.path).parent != picture.parent  # its own copy, on gus's node
                # s: its path, said in the conversation
                await pilot.press("escape", "s")
                await until(pilot, lambda: any(t.startswith(f"{picture.name} is at {row.path}")
                                               for t in texts(app_b)), 5, "s: the file's path")
        finally:
            finished.set()

    async def main() -> None:
        await asyncio.gather(fay(), gus())

    asyncio.run(main())


# -- private groups (docs/groups.md) -----------------------------------------------------------


def test_a_private_group_created_invited_accepted_and_written_in_both_apps(make_node) -> None:
    # a service type of their own: the module's pair (and other loopback nodes) stay apart
    own = '[discovery]\nservice_type = "_tzchatgroup._tcp.local."\n'
    a = make_node("hal", config=own).start()
    b = make_node("ivy", config=own).start()
    a.wait_up()
    b.wait_up()
    a.wait_peer("ivy", ("verified",), timeout=20)
    b.wait_peer("hal", ("verified",), timeout=20)
    from tazcom.common import rpc
    from tests.harness import request

    # each router has the other's profile (its DM key): an invitation is sealed to it
    for node, other in ((a, b), (b, a)):
        wait_for(lambda node=node, other=other: any(
            e.key == other.key for e in request(node, "router", rpc.GetMesh()).items), 20,
            f"{other.nick}'s profile at {node.nick}'s router")
    app_a = ChatApp(load_from_env(a.env))
    app_b = ChatApp(load_from_env(b.env))
    b_ready = asyncio.Event()  # ivy's app is up: the invitation reaches it live
    invited = asyncio.Event()
    joined = asyncio.Event()
    written = asyncio.Event()
    finished = asyncio.Event()
    gid: list[str] = []

    def listed(app: ChatApp) -> list[str]:
        return [str(o.prompt) for o in app.query_one("#conversations").options]

    def drawn(app: ChatApp) -> str:
        return "\n".join(screen_lines(app))

    async def hal() -> None:
        async with app_a.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app_a.ready_at is not None, 20, "hal's app to load")
            await until(pilot, lambda: b.key in app_a.peers, 10, "ivy in hal's peer list")
            await until(pilot, b_ready.is_set, 20, "ivy's app to load")
            # /invite outside a group: said, nothing sent
            await pilot.press(*"/invite ivy", "enter")
            await until(pilot, lambda: any("acts on the open group" in t for t in texts(app_a)),
                        5, "/invite refused outside a group")
            # /group NAME creates it and opens it; it is listed beside the room
            await pilot.press(*"/group crew", "enter")
            await until(pilot, lambda: app_a.current in app_a.groups, 10, "the group open")
            gid.append(app_a.current)
            assert app_a.groups[gid[0]].role == "admin"
            assert any(p.startswith("≡ crew") for p in listed(app_a)), listed(app_a)
            assert "crew: private group, 1 member" in str(app_a.query_one("#title").render())
            await pilot.press(*"/invite ivy", "enter")
            await until(pilot, lambda: any(t.startswith("ivy (") and "is invited" in t
                                           for t in texts(app_a)), 10, "ivy invited")
            invited.set()
            await until(pilot, lambda: any(t.startswith("ivy (") and t.endswith("joined crew")
                                           for t in texts(app_a)), 20,
                        "ivy's joining said in the group")
            await until(pilot, joined.is_set, 20, "ivy's app in the group")
            await pilot.press(*"hello crew", "enter")
            await until(pilot, lambda: any(m.text == "hello crew" and m.own and m.group
                                           for m in app_a.query_one(MessageView).messages),
                        10, "our group message shown")
            await until(pilot, lambda: "hello crew  [delivered 1/1]" in drawn(app_a), 20,
                        "delivered to 1 of 1 members, drawn")
            written.set()
            await until(pilot, lambda: "hi hal, ivy here" in texts(app_a), 20,
                        "ivy's answer in the group")
            (reply,) = [m for m in app_a.query_one(MessageView).messages
                        if m.text == "hi hal, ivy here"]
            assert reply.origin == b.key and reply.group and reply.to == gid[0]
            assert "ivy: hi hal, ivy here" in drawn(app_a)
            await until(pilot, finished.is_set, 30, "ivy's app to finish")
            # /kick NICK: ivy is removed, said here (and at ivy's: below, before finishing)
            await pilot.press(*"/kick ivy", "enter")
            await until(pilot, lambda: any("is no longer a member of crew" in t
                                           for t in texts(app_a)), 10, "ivy removed")
            assert [m.key for m in app_a.groups[gid[0]].members] == [a.key]

    async def ivy() -> None:
        try:
            async with app_b.run_test(size=(100, 30)) as pilot:
                await until(pilot, lambda: app_b.ready_at is not None, 20, "ivy's app to load")
                b_ready.set()
                await until(pilot, invited.is_set, 30, "hal's invitation")
                # the invitation: a line of the room, pending; the group is not listed yet
                view = app_b.query_one(MessageView)
                await until(pilot, lambda: any(m.invite and m.status == "pending"
                                               for m in view.messages), 20,
                            "the invitation line in the room")
                (line,) = [m for m in view.messages if m.invite]
                assert line.text.startswith("hal (") and "invites you to the private group " \
                    "crew" in line.text, line.text
                assert "/accept crew or /decline crew" in drawn(app_b)
                assert app_b.groups[line.invite].role == "invited"
                assert not any(p.startswith("≡ ") for p in listed(app_b))
                # Esc, then a on the line: accepted, and the group opens
                await pilot.press("escape", "a")
                await until(pilot, lambda: app_b.current == line.invite, 10,
                            "the group open after accepting")
                assert app_b.groups[line.invite].role == "member"
                assert line.status == "accepted"
                assert any(p.startswith("≡ crew") for p in listed(app_b)), listed(app_b)
                assert app_b.focused is app_b.query_one("#input")
                joined.set()
                await until(pilot, written.is_set, 30, "hal's message")
                await until(pilot, lambda: "hello crew" in texts(app_b), 20,
                            "hal's message in the group conversation")
                assert "hal: hello crew" in drawn(app_b)
                # a member is no admin: the router's refusal is a line, not a crash
                await pilot.press(*"/kick hal", "enter")
                await until(pilot, lambda: any(t.startswith("could not remove hal")
                                               and "(not_admin)" in t for t in texts(app_b)),
                            10, "/kick refused (not_admin)")
                await pilot.press(*"hi hal, ivy here", "enter")
                await until(pilot, lambda: "hi hal, ivy here  [delivered 1/1]" in drawn(app_b),
                            20, "ivy's answer delivered")
                finished.set()
                await until(pilot, lambda: app_b.groups[line.invite].role == "removed", 20,
                            "ivy removed by hal")
                await until(pilot, lambda: any(t.startswith("you were removed from crew")
                                               for t in texts(app_b)), 10,
                            "the removal said in the group")
        finally:
            finished.set()

    async def main() -> None:
        await asyncio.gather(hal(), ivy())

    asyncio.run(main())
