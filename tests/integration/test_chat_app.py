"""The chat app against real nodes: Textual's run_test()/Pilot, and a real terminal (tmux)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable

import pytest

from tazcom.chat import ROOM, ChatApp, MessageView
from tazcom.services.runtime import load_from_env
from tests.harness import BULK, Node, wait_for


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
    n = make_node("dora", config=BULK).start().wait_up()  # posts 3,000
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
