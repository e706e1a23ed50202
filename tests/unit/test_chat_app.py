"""The chat app's file lines, without a node: Textual's pilot drives the app headless
against the stub services of test_cli (real request sockets, nothing else runs), and
file rows are fed in as the bus would bring them. The app against real nodes is in
tests/integration/test_chat_app.py."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from tazcom import chat
from tazcom.chat import ROOM, ChatApp, MessageView, file_text
from tazcom.common import rpc
from tazcom.common.errors import RequestFailed
from tazcom.common.events import FileStatus
from tests.harness import short_tmp
from tests.unit.test_cli import BOB, HOSTILE, ME, NOW, StubNode

FILE_ID = "f1" * 16


@pytest.fixture
def stub() -> Iterator[StubNode]:
    clock = rpc.ClockInfo(epoch=1, seq=1, offset=0.0, neighbours=0, samples=0)
    node = StubNode(short_tmp(), extra={"gateway": {rpc.GetClock: lambda _r: clock}})
    yield node
    node.close()
    shutil.rmtree(node.home, ignore_errors=True)


def frow(status: str, *, direction: str = "in", to: str | None = ME, done: int = 0,
         name: str = "photo.png", size: int = 4096, path: str = "", reason: str = "",
         file_id: str = FILE_ID, mime: str = "image/png") -> FileStatus:
    return FileStatus(src="router", ts=NOW, id=file_id, name=name, size=size, mime=mime,
                      hash="ab" * 32, origin=BOB if direction == "in" else ME, to=to,
                      direction=direction, status=status, reason=reason, done=done,
                      path=path, sent=int(time.time() * 1000))


def png(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


async def until(pilot: Any, predicate: Callable[[], object], what: str,
                timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.02)


def run(stub: StubNode, scenario: Callable[[ChatApp, Any], Awaitable[None]],
        **kw: Any) -> None:
    async def main() -> None:
        app = ChatApp(stub.config, **kw)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready_at is not None, "the app to load")
            await scenario(app, pilot)

    asyncio.run(main())


def lines(app: ChatApp) -> list[str]:
    """What the message view draws."""
    return ["".join(seg.text for seg in strip) for strip in app.query_one(MessageView)._lines]


def squeezed(text: str) -> str:
    return "".join(text.split())


def said(app: ChatApp, text: str) -> bool:
    """``text`` is drawn, wrapped or not (whitespace aside)."""
    return squeezed(text) in squeezed("".join(lines(app)))


async def typed(pilot: Any, line: str) -> None:
    """``line`` in the input line, then Enter (set whole: a key press per character
    costs a screen update each)."""
    pilot.app.query_one("#input").value = line
    await pilot.press("enter")


# -- file lines from file.status ---------------------------------------------------------


def test_a_file_row_is_a_line_updated_in_place(stub: StubNode, tmp_path: Path) -> None:
    picture = png(tmp_path / "photo.png", (640, 480))

    async def scenario(app: ChatApp, pilot: Any) -> None:
        app.on_bus_event(frow("offered"))  # a DM file from bob: his conversation
        assert app.unread.get(BOB) == 1 and not said(app, "photo.png")
        await app.open_conversation(BOB)
        await until(pilot, lambda: said(app, "photo.png"), "the offered file's line")
        assert said(app, "bob[/bold]: ⇣ photo.png  4.0 KiB  [offered: /get, or Esc then g]")
        view = app.query_one(MessageView)
        count = len(view.messages)
        app.on_bus_event(frow("receiving", done=2048))
        assert said(app, "█████░░░░░ 50% receiving") and len(view.messages) == count
        app.on_bus_event(frow("received", done=4096, path=str(picture)))
        assert said(app, "[received]  [image 640x480 photo.png]")
        assert not said(app, "receiving") and len(view.messages) == count
        # a room file shows in the room, sent by us: its status as a message's
        app.on_bus_event(frow("sent", direction="out", to=None, file_id="e2" * 16,
                              name="notes.txt", mime="text/plain", done=1024,
                              path=str(tmp_path / "notes.txt")))
        assert app.unread.get(ROOM) is None  # our own: nothing unread
        await app.open_conversation(ROOM)
        await until(pilot, lambda: said(app, "notes.txt"), "the room file's line")
        assert said(app, "me: ⇡ notes.txt  4.0 KiB  [sent, 25% fetched]")

    run(stub, scenario)


def test_files_listed_by_the_router_are_in_their_conversations(stub: StubNode) -> None:
    stub.file_lists = [(frow("failed", reason="disk full", to=None),
                        frow("delivered", direction="out", to=BOB, file_id="d3" * 16,
                             name="report.pdf", mime="application/pdf"))]

    async def scenario(app: ChatApp, pilot: Any) -> None:
        assert said(app, "photo.png  4.0 KiB  [FAILED: disk full]")  # the room's
        await app.open_conversation(BOB)
        await until(pilot, lambda: said(app, "report.pdf"), "bob's file")
        assert said(app, "me: ⇡ report.pdf  4.0 KiB  [delivered]")

    run(stub, scenario)


def test_a_strangers_file_name_is_shown_harmlessly(stub: StubNode) -> None:
    async def scenario(app: ChatApp, pilot: Any) -> None:
        app.on_bus_event(frow("offered", to=None, name=HOSTILE))
        drawn = "\n".join(lines(app))
        assert "\x1b" not in drawn and "\u202e" not in drawn and "\\x1b[2J" in drawn
        assert "[bold]x[/bold]" in drawn  # markup shown as typed, never parsed

    run(stub, scenario)


# -- /file ---------------------------------------------------------------------------------


def test_file_with_a_missing_path_is_refused_at_once(stub: StubNode, tmp_path: Path) -> None:
    async def scenario(app: ChatApp, pilot: Any) -> None:
        await typed(pilot, f"/file {tmp_path}/nope.png")
        await until(pilot, lambda: said(app, f"no such file: {tmp_path}/nope.png"),
                    "the refusal")
        await typed(pilot, f"/file {tmp_path}")
        await until(pilot, lambda: said(app, f"not a file: {tmp_path}"), "a directory refused")
        await typed(pilot, "/file")
        await until(pilot, lambda: said(app, "usage: /file PATH"), "the usage")
        assert stub.file_requests == []

    run(stub, scenario)


def test_file_sends_to_the_open_conversation(stub: StubNode, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my notes.txt").write_text("hello")
    stub.file_answer = frow("queued", direction="out", to=None, name="my notes.txt",
                            mime="text/plain", path=str(tmp_path / "my notes.txt"))

    async def scenario(app: ChatApp, pilot: Any) -> None:
        await typed(pilot, '/file "~/my notes.txt"')  # quoted, and ~ expanded
        await until(pilot, lambda: said(app, "my notes.txt"), "the file's line in the room")
        (req,) = stub.file_requests
        assert isinstance(req, rpc.SendFile)
        assert (req.path, req.to) == (str(tmp_path / "my notes.txt"), None)
        assert said(app, "me: ⇡ my notes.txt  4.0 KiB  [queued]")
        await app.open_conversation(BOB)
        stub.refuse_file = RequestFailed("no DM key for b0b0", code="no_key")
        await typed(pilot, "/file ~/my notes.txt")
        await until(pilot, lambda: said(app, "NOT SENT (no DM key"), "the refusal")
        assert stub.file_requests[-1].to == bytes.fromhex(BOB)

    run(stub, scenario)


# -- keys on file lines ------------------------------------------------------------------------


def test_keys_get_open_and_save_the_selected_file(stub: StubNode, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    picture = png(tmp_path / "photo.png")
    stub.file_answer = frow("receiving", to=None)
    opened: list[list[str]] = []
    monkeypatch.setattr(chat.subprocess, "Popen", lambda argv, **_kw: opened.append(argv))

    async def scenario(app: ChatApp, pilot: Any) -> None:
        await typed(pilot, "/get")
        await until(pilot, lambda: said(app, "no file in this conversation"), "no file")
        app.on_bus_event(frow("offered", to=None, file_id="e2" * 16, name="old.png"))
        app.on_bus_event(frow("offered", to=None))
        await pilot.press("escape")  # the conversation has the keys
        view = app.query_one(MessageView)
        assert view.has_focus and view.selected == FILE_ID  # the newest file
        await until(pilot, lambda: said(app, "▶ "), "the selection mark")
        await pilot.press("up")
        assert view.selected == "e2" * 16
        await pilot.press("down", "g")
        await until(pilot, lambda: said(app, "0% receiving"), "the answer of files.get")
        assert stub.file_requests[-1] == rpc.GetFile(file=FILE_ID)
        await pilot.press("o")
        await until(pilot, lambda: said(app, "photo.png is not here yet (receiving)"),
                    "not here yet")
        app.on_bus_event(frow("received", to=None, done=4096, path=str(picture)))
        await pilot.press("s")
        await until(pilot, lambda: said(app, f"photo.png is at {picture} (copied"), "the path")
        assert app.clipboard == str(picture)
        monkeypatch.setattr(chat.shutil, "which", lambda _name: None)
        await pilot.press("o")
        await until(pilot, lambda: said(app, "(no xdg-open here)"), "no opener")
        monkeypatch.setattr(chat.shutil, "which", lambda name: f"/usr/bin/{name}")
        await pilot.press("o")
        await until(pilot, lambda: opened, "xdg-open")
        assert opened == [["/usr/bin/xdg-open", str(picture)]]
        await pilot.press("escape")
        assert app.query_one("#input").has_focus
        await until(pilot, lambda: not said(app, "▶ "), "the mark gone")
        await typed(pilot, "/save")  # the same from the input line
        await until(pilot, lambda: squeezed("".join(lines(app))).count(
            squeezed(f"photo.png is at {picture} (copied")) == 2, "/save")

    run(stub, scenario)


class FakePicture(Static):
    """Stands for textual-image's widget (a terminal with graphics)."""

    def __init__(self, image: Any) -> None:
        super().__init__("picture")
        self.picture = image


def test_an_image_here_is_previewed_where_the_terminal_draws_pictures(
        stub: StubNode, tmp_path: Path) -> None:
    picture = png(tmp_path / "photo.png", (2000, 1500))

    async def scenario(app: ChatApp, pilot: Any) -> None:
        pane = app.query_one("#preview")
        app.on_bus_event(frow("receiving", to=None, done=10))
        assert not pane.display  # not here yet
        app.on_bus_event(frow("received", to=None, done=4096, path=str(picture)))
        await until(pilot, lambda: pane.display and pane.query(FakePicture), "the preview")
        shown = pane.query_one(FakePicture).picture
        assert max(shown.size) <= chat.PREVIEW_PIXELS  # scaled down off the event loop
        await pilot.press("escape", "v")
        assert not pane.display
        await pilot.press("v")
        assert pane.display
        app.on_bus_event(frow("offered", to=None, file_id="e2" * 16, name="b.txt",
                              mime="text/plain"))
        assert not pane.display  # the newest file line is selected: no picture

    run(stub, scenario, image_widget=FakePicture)


# -- the pure parts ------------------------------------------------------------------------


def test_file_text_and_helpers(tmp_path: Path) -> None:
    assert chat.file_conv(frow("offered")) == BOB
    assert chat.file_conv(frow("queued", direction="out", to=BOB)) == BOB
    assert chat.file_conv(frow("queued", direction="out", to=None)) == ROOM
    assert chat.is_image(frow("offered", name="x.JPEG", mime=""))
    assert not chat.is_image(frow("offered", name="x.pdf", mime="application/pdf"))
    assert chat.image_size(str(png(tmp_path / "a.png", (5, 7)))) == (5, 7)
    (tmp_path / "fake.png").write_text("not a png")
    assert chat.image_size(str(tmp_path / "fake.png")) is None
    assert chat.image_size(str(tmp_path / "missing.png")) is None
    here = frow("received", done=4096, path="/x/photo.png")
    assert str(file_text(here)).endswith("[received]  [image photo.png]")
    assert str(file_text(here, (3, 2))).endswith("[image 3x2 photo.png]")
    assert str(file_text(frow("failed"))).endswith("[FAILED]")
    assert str(file_text(frow("receiving", size=0))).endswith("100% receiving")
    assert chat.image_widget() is None  # not a terminal: text placeholders
