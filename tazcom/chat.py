"""``tazcom chat``: the terminal chat app, a client of the local node.

The app owns no state: it reads the node's services over their request
sockets (peers from discovery, history from the store, posts through the
router) and follows the bus (``chat.*``, ``peer.*``, ``mesh.*``,
``service.*``) in a worker. Quitting loses nothing, several apps can watch the
same node, and when the node or one of its services goes away the status bar
says so and the app catches up by itself when it is back (docs/protocol.md).

Keys: Enter sends to the selected conversation; Ctrl+N / Ctrl+P (or
Alt+Down / Alt+Up) switch conversations; PageUp / PageDown scroll; Tab
completes nicknames; Ctrl+T switches light and dark; Ctrl+Q quits.

Files (docs/files.md): ``/file PATH`` sends one to the open conversation
(``files.send``); every file sent or received is a line of its conversation,
updated live from ``file.status``. Esc moves the focus to the conversation,
where Up / Down select a file line and ``g`` gets an offered file, ``o`` opens
a received one (``xdg-open``), ``s`` shows its path and copies it, ``v``
shows or hides image previews; Esc (or ``i``) goes back to typing. ``/get``,
``/open`` and ``/save`` do the same for the selected (else the newest) file.
Images show as ``[image 640x480 photo.jpg]``, and as a picture under the
conversation where the terminal draws Kitty or Sixel graphics (the optional
``textual-image`` package, probed before the app starts).

Private groups (docs/groups.md): listed beside the room and the peers (``≡ name``),
with unread counts; writing in an open group is ``group.say``, and our line's status
says how many members have it (``[delivered 2/3]``). ``/group NAME`` creates one and
opens it; in the open group ``/invite NICK``, ``/kick NICK`` (admins), ``/members`` and
``/leave``. An invitation is a line of the room: ``/accept NAME`` or ``/decline NAME``,
or Esc then ``a`` / ``d`` on the line; an accepted group opens. ``/groups`` lists them
all. The app follows ``group.changed`` and reloads ``group.list``; what changed (who
was invited, joined, went; our removal) is said in the group's conversation.

Safe among strangers: every string a peer wrote is shown through
``common.display.safe`` (no escape sequence, control character or bidi
override reaches the terminal) and never parsed as markup (the app builds
``rich.text.Text``); messages are in the order they reached the node, with the
author's claimed time shown where it differs by more than a minute; messages of
blocked and muted keys are hidden (the router's policy table, mirrored).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from tazcom.common import rpc, tables
from tazcom.common.config import Config
from tazcom.common.display import safe
from tazcom.common.errors import TazcomError
from tazcom.common.events import (
    ChatMessage,
    ChatStatus,
    ClockOffset,
    Event,
    FileStatus,
    GroupChanged,
    PeerDiscovered,
    PeerForgotten,
    PeerInfo,
    PeerKeyChanged,
    PeerLost,
    PeerPolicy,
    PeerUpdated,
    ServiceHealthChanged,
    ServiceHeartbeat,
    ServiceStopping,
)
from tazcom.common.keys import fingerprint, safety_number
from tazcom.common.mirror import Change
from tazcom.common.peers import PeerAmbiguous, PeerNotFound, Target, match_peer, resolve_target
from tazcom.services.busclient import BusClient, RpcClient
from tazcom.services.mirrorfeed import MirrorFeed

ROOM = "*"
HISTORY_PAGE = 5000
STATUS_MARKS = {"queued": "queued", "sent": "sent", "relayed": "relayed",
                "delivered": "delivered", "failed": "FAILED"}
STATE_MARKS = {"verified": "●", "connected": "◐", "discovered": "◌", "mesh": "◇",
               "offline": "○"}
#: The author's claimed time is shown where it differs from arrival by more (seconds).
CLAIM_SKEW = 60.0
#: Policies whose keys' messages are not shown (a ban is about links, not messages).
HIDDEN = ("block", "mute")
POLICY_MARKS = {"block": " ⊘", "mute": " ∅"}
POLICY_COMMANDS = {"/block": ("block", False), "/unblock": ("block", True),
                   "/mute": ("mute", False), "/unmute": ("mute", True)}
DONE = {("block", False): "blocked", ("block", True): "unblocked",
        ("mute", False): "muted", ("mute", True): "unmuted"}
HELP = [
    "Enter sends to the selected conversation; Ctrl+N/Ctrl+P switch conversations.",
    "/msg NICK TEXT   direct message (opens the conversation)",
    "/nick NAME       change your nickname",
    "/peers           who is around",
    "/whois NICK      fingerprint, key and safety number",
    "/trust NICK      accept NICK's (new) key after comparing safety numbers",
    "/block NICK      nothing NICK writes is shown, stored or relayed here; /unblock NICK",
    "/mute NICK       hide NICK's messages here (still relayed); /unmute NICK",
    "/file PATH       send a file to this conversation (the room, or the peer)",
    "Esc              select file lines (Up/Down): g get an offered file, o open it,",
    "                 s show and copy its path, v images on/off; Esc or i: back here",
    "/get /open /save the same for the selected (else the newest) file",
    "/group NAME      create a private group and open it; /groups lists yours",
    "/invite NICK     invite NICK to the open group; /kick NICK removes (admins)",
    "/members         who is in the open group;  /leave  leave it",
    "/accept NAME     join a group you are invited to (Esc, then a on its line);",
    "/decline NAME    refuse the invitation (Esc, then d on its line)",
    "/help            this text;  /quit  leave (the node keeps running)",
    "Tab completes nicknames; PageUp/PageDown scroll; Ctrl+T light/dark theme.",
]
#: The kind of a file's manifest in the store (envelope.KIND_FILE).
KIND_FILE = 6
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
#: Cells of a file line's progress bar.
FILE_BAR = 10
#: The largest side of an image preview, in pixels, before the terminal scales it.
PREVIEW_PIXELS = 1024
#: The kind of a group message in the store (envelope.KIND_GROUP).
KIND_GROUP = 8
#: Our roles in a group that list it beside the room (invitations, left and removed
#: groups are not listed, unless open).
GROUP_ACTIVE = ("admin", "member")
GROUP_MARK = "≡ "
#: A group message's delivery reason (routergroups: "2 of 3 members").
MEMBERS_REASON = re.compile(r"(\d+) of (\d+) members?")
#: An invitation line's id (a line of the room, never a stored message's).
INVITE_ID = "invite:"


@dataclass
class Msg:
    id: str
    origin: str
    to: str | None
    ts: float  # seconds: when the author says it wrote it (its clock)
    text: str
    own: bool = False
    status: str = ""
    reason: str = ""
    system: bool = False
    #: Seconds: when it reached our node (our clock); its place in the conversation.
    received: float | None = None
    #: A file sent or received (its row, kept current from file.status); text is its name.
    file: FileStatus | None = None
    #: Its pixels, for an image that is here in full (None: not an image, or unknown).
    image: tuple[int, int] | None = None
    #: A group message (``to`` is the group's id).
    group: bool = False
    #: Our group message: how many members have it, of how many (chat.status).
    delivered: int | None = None
    members: int | None = None
    #: An invitation line: the group's id (its status: pending, accepted, declined...;
    #: its reason: the group's name, for the line's hint).
    invite: str = ""

    @property
    def arrived(self) -> float:
        return self.ts if self.received is None else self.received

    @property
    def conv(self) -> str:
        if self.to is None:
            return ROOM
        return self.to if self.own or self.group else self.origin

    @property
    def selectable(self) -> bool:
        """A line the keys act on: a file, or an invitation."""
        return self.file is not None or bool(self.invite)


def status_mark(msg: Msg) -> tuple[str, bool]:
    """The mark of our message's status, and whether its reason is said with it: a group
    message delivered says to how many members (``delivered 2/3``)."""
    if msg.group and msg.status == "delivered":
        k, n = msg.delivered, msg.members
        found = MEMBERS_REASON.fullmatch(msg.reason or "")
        if (k is None or n is None) and found:
            k, n = int(found[1]), int(found[2])
        if k is not None and n is not None:
            return f"delivered {k}/{n}", False
    return STATUS_MARKS.get(msg.status, msg.status), True


def invite_hint(status: str, name: str) -> tuple[str, str]:
    """What an invitation line says after its text, and its style."""
    if status == "pending":
        return f"  [/accept {name} or /decline {name}; Esc then a or d]", "bold yellow"
    return f"  [{status}]", "dim"


def _nick_style(key: str) -> Style:
    hue = hashlib.blake2b(key.encode(), digest_size=1).digest()[0]
    palette = ["#e06c75", "#98c379", "#e5c07b", "#61afef", "#c678dd", "#56b6c2", "#d19a66",
               "#be5046"]
    return Style(color=palette[hue % len(palette)], bold=True)


def file_conv(row: FileStatus) -> str:
    """The conversation a file belongs to: the room, or the other end of a DM file."""
    if row.to is None:
        return ROOM
    return row.to if row.direction == "out" else row.origin


def is_image(row: FileStatus) -> bool:
    return row.mime.startswith("image/") or row.name.lower().endswith(IMAGE_SUFFIXES)


def file_here(row: FileStatus) -> bool:
    """The whole file is on this node: received, or our own original."""
    return bool(row.path) and (row.direction == "out" or row.status == "received")


def image_size(path: str) -> tuple[int, int] | None:
    """An image's pixels from its header (Pillow, if installed); None if unreadable."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            # a huge image from a stranger: a warning printed now would tear the screen
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def file_text(row: FileStatus, image: tuple[int, int] | None = None) -> Text:
    """A file line after the author: ``⇣ photo.jpg 2.0 MiB ████░░░░░░ 40% receiving``;
    an offered file says how to get it, an image here says its size."""
    from tazcom.cli import human_size

    arrow = "⇡ " if row.direction == "out" else "⇣ "
    text = Text.assemble((arrow, "bold"), (safe(row.name), "bold"),
                         (f"  {human_size(row.size)}", "dim"))
    pct = 100 if row.size <= 0 or row.done >= row.size else min(99, row.done * 100 // row.size)
    if row.status == "failed":
        text.append(f"  [FAILED{': ' + safe(row.reason) if row.reason else ''}]", "bold red")
    elif row.status == "receiving":
        filled = pct * FILE_BAR // 100
        text.append(f"  {'█' * filled}{'░' * (FILE_BAR - filled)} {pct}% receiving", "cyan")
    elif row.status == "offered":
        text.append("  [offered: /get, or Esc then g]", "bold yellow")
    elif row.direction == "out" and row.status in ("sent", "relayed") and 0 < row.done < row.size:
        text.append(f"  [{row.status}, {pct}% fetched]", "dim")
    else:
        text.append(f"  [{STATUS_MARKS.get(row.status, row.status)}]", "dim")
    if is_image(row) and file_here(row):
        dims = f"{image[0]}x{image[1]} " if image else ""
        text.append(f"  [image {dims}{safe(row.name)}]", "italic")
    return text


class MessageView(ScrollView, can_focus=True):
    """A conversation, rendered line by line (Textual's line API), so thousands of
    messages scroll without lag and a status can change in place."""

    DEFAULT_CSS = "MessageView { height: 1fr; }"
    # With the focus here (Esc from the input line), keys act on the selected file line
    # (or invitation line).
    BINDINGS = [
        Binding("up", "select_file(-1)", "Previous file", show=False),
        Binding("down", "select_file(1)", "Next file", show=False),
        Binding("g", "app.file('get')", "Get file", show=False),
        Binding("o", "app.file('open')", "Open file", show=False),
        Binding("s", "app.file('save')", "File path", show=False),
        Binding("v", "app.file('preview')", "Previews", show=False),
        Binding("a", "app.invitation('accept')", "Accept invitation", show=False),
        Binding("d", "app.invitation('decline')", "Decline invitation", show=False),
        Binding("escape,i", "app.focus_input", "Type", show=False),
        Binding("pageup", "app.page_up", "Scroll up", show=False),
        Binding("pagedown", "app.page_down", "Scroll down", show=False),
    ]

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.messages: list[Msg] = []
        self.by_id: dict[str, int] = {}
        self.names: dict[str, str] = {}
        self.me = ""
        self._lines: list[Strip] = []
        self._first_line: list[int] = []  # message index -> its first line
        self._width = 0
        #: The file (or invitation) line the keys act on: the newest, until Up/Down
        #: choose one.
        self.selected: str | None = None
        self._chosen = False

    # -- content -----------------------------------------------------------------------

    def set_messages(self, messages: list[Msg]) -> None:
        """Show ``messages``, scrolled to the newest."""
        self._show(messages)
        self._to_end()

    def _show(self, messages: list[Msg]) -> None:
        self.messages = list(messages)
        self.by_id = {m.id: i for i, m in enumerate(self.messages) if m.id}
        if not (self._chosen and self.selected in self.by_id):
            self._chosen = False
            self.selected = next((m.id for m in reversed(self.messages) if m.selectable),
                                 None)
        self._rewrap()

    def _to_end(self) -> None:
        # max_scroll_y follows virtual_size only once the layout has seen it (newer
        # Textual): scroll now, and again after that refresh
        self.scroll_end(animate=False, immediate=True)
        self.call_after_refresh(self.scroll_end, animate=False, immediate=True)

    def prepend(self, older: list[Msg]) -> None:
        older = [m for m in older if m.id not in self.by_id]
        if not older:
            return
        before = len(self._lines)
        self._show(older + self.messages)
        y = len(self._lines) - before  # the line that was at the top stays there
        self.scroll_to(y=y, animate=False, immediate=True)
        self.call_after_refresh(self.scroll_to, y=y, animate=False, immediate=True)

    def add(self, msg: Msg) -> None:
        if msg.id and msg.id in self.by_id:
            if msg.file is None and not msg.invite:
                self.update(msg.id, msg.status, msg.reason)
            else:
                self.redraw(msg.id)
            return
        at_end = self.scroll_y >= self.max_scroll_y - 1
        self.messages.append(msg)
        if msg.id:
            self.by_id[msg.id] = len(self.messages) - 1
        previous = self.selected
        if msg.selectable and not self._chosen:
            self.selected = msg.id  # the newest file, unless one was chosen
        self._first_line.append(len(self._lines))
        self._lines += self._wrap(msg)
        self._resize()
        if previous != self.selected and previous is not None:
            self.redraw(previous)  # its selection mark goes
        if at_end:
            self._to_end()

    def update(self, msg_id: str, status: str, reason: str = "",
               delivered: int | None = None, members: int | None = None) -> bool:
        i = self.by_id.get(msg_id)
        if i is None:
            return False
        msg = self.messages[i]
        msg.status, msg.reason = status, reason
        if members is not None:
            msg.delivered, msg.members = delivered, members
        return self.redraw(msg_id)

    def redraw(self, msg_id: str) -> bool:
        """Wrap one message again (a status, a file's progress, the selection moved)."""
        i = self.by_id.get(msg_id)
        if i is None:
            return False
        msg = self.messages[i]
        # re-wrap this message only: a burst of statuses over thousands of messages must
        # not re-wrap the whole view each time
        start = self._first_line[i]
        end = self._first_line[i + 1] if i + 1 < len(self._first_line) else len(self._lines)
        lines = self._wrap(msg)
        self._lines[start:end] = lines
        delta = len(lines) - (end - start)
        if delta:
            for j in range(i + 1, len(self._first_line)):
                self._first_line[j] += delta
        self._resize()
        return True

    def refresh_names(self) -> None:
        self._rewrap()

    # -- file lines ---------------------------------------------------------------------

    def selected_file(self) -> Msg | None:
        """The selected file line; else (an invitation is selected) the newest file."""
        i = self.by_id.get(self.selected or "")
        if i is not None and self.messages[i].file:
            return self.messages[i]
        return next((m for m in reversed(self.messages) if m.file), None)

    def selected_invitation(self) -> Msg | None:
        """The selected invitation line; else the newest one still pending."""
        i = self.by_id.get(self.selected or "")
        if i is not None and self.messages[i].invite:
            return self.messages[i]
        return next((m for m in reversed(self.messages)
                     if m.invite and m.status == "pending"), None)

    def action_select_file(self, step: int) -> None:
        files = [i for i, m in enumerate(self.messages) if m.selectable]
        if not files:  # nothing to select: the keys scroll, as they do elsewhere
            (self.scroll_up if step < 0 else self.scroll_down)(animate=False)
            return
        at = self.by_id.get(self.selected or "")
        pos = files.index(at) if at in files else len(files)
        i = files[max(0, min(len(files) - 1, pos + step))]
        previous, self.selected, self._chosen = self.selected, self.messages[i].id, True
        if previous:
            self.redraw(previous)
        self.redraw(self.selected)
        self.scroll_to_region(self._region_of(i), animate=False, immediate=True)
        self.post_message(self.FileSelected())

    def _region_of(self, i: int) -> Region:
        end = self._first_line[i + 1] if i + 1 < len(self._first_line) else len(self._lines)
        return Region(0, self._first_line[i], self._width, end - self._first_line[i])

    class FileSelected(Message):
        """Up/Down chose another file line (the app shows its preview)."""

    def on_focus(self) -> None:
        # its mark shows while the keys act on it; later, as Widget sets has_focus after us
        if self.selected:
            self.call_later(self.redraw, self.selected)

    def on_blur(self) -> None:
        if self.selected:
            self.call_later(self.redraw, self.selected)

    # -- rendering ------------------------------------------------------------------------

    def _text(self, msg: Msg) -> Text:
        # Text objects, never markup: a nickname "[link=...]" is shown as typed; and every
        # peer string through safe(): no escape sequence reaches the terminal.
        stamp = time.strftime("%H:%M", time.localtime(msg.arrived))
        if msg.invite:  # an invitation: what to do with it, until it is done
            hint, style = invite_hint(msg.status, msg.reason)
            text = Text.assemble((f"{stamp} ", "dim"), ("* " + safe(msg.text), "italic"),
                                 (safe(hint), style))
            if msg.id == self.selected and self.has_focus:
                text = Text.assemble(("▶ ", "bold"), text)
                text.stylize("reverse")
            return text
        if msg.system:
            return Text.assemble((f"{stamp} ", "dim"), ("* " + safe(msg.text), "italic"))
        who = "me" if msg.own else self.names.get(msg.origin, msg.origin[:8])
        if msg.file is not None:
            text = Text.assemble((f"{stamp} ", "dim"), (safe(who), _nick_style(msg.origin)),
                                 ": ", file_text(msg.file, msg.image))
            if msg.id == self.selected and self.has_focus:
                text = Text.assemble(("▶ ", "bold"), text)
                text.stylize("reverse")
            return text
        text = Text.assemble((f"{stamp} ", "dim"), (safe(who), _nick_style(msg.origin)), ": ",
                             safe(msg.text))
        if abs(msg.ts - msg.arrived) > CLAIM_SKEW:
            text.append(f"  (claimed {time.strftime('%H:%M', time.localtime(msg.ts))})", "dim")
        if msg.own and msg.status:
            mark, with_reason = status_mark(msg)
            style = "bold red" if msg.status == "failed" else "dim"
            reason = ": " + safe(msg.reason) if msg.reason and with_reason else ""
            text.append(f"  [{mark}{reason}]", style)
        return text

    def _wrap(self, msg: Msg) -> list[Strip]:
        width = max(10, self._width or self.size.width or 80)
        console = self.app.console
        lines = self._text(msg).wrap(console, width)
        return [Strip(list(line.render(console))) for line in lines] or [Strip([])]

    def _rewrap(self) -> None:
        self._width = self.size.width or 80
        self._lines, self._first_line = [], []
        for msg in self.messages:
            self._first_line.append(len(self._lines))
            self._lines += self._wrap(msg)
        self._resize()

    def _resize(self) -> None:
        self.virtual_size = Size(self._width, len(self._lines))
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._width:
            self._rewrap()

    def render_line(self, y: int) -> Strip:
        index = y + self.scroll_offset.y
        if 0 <= index < len(self._lines):
            return self._lines[index].crop(0, self.size.width)
        return Strip([Segment(" " * self.size.width)])


class ChatApp(App[None]):
    """The chat app of one node."""

    CSS_PATH = "chat.tcss"
    TITLE = "tazcom chat"
    ENABLE_COMMAND_PALETTE = False  # Ctrl+P is "previous conversation" here
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit"),
        Binding("ctrl+n,alt+down", "next_conversation", "Next", show=False),
        Binding("ctrl+p,alt+up", "prev_conversation", "Previous", show=False),
        Binding("pageup", "page_up", "Scroll up", show=False),
        Binding("pagedown", "page_down", "Scroll down", show=False),
        Binding("ctrl+t", "toggle_dark", "Theme", show=False),
        Binding("tab", "complete", "Complete", show=False, priority=True),
        Binding("escape", "focus_files", "Files", show=False),
    ]

    def __init__(self, config: Config, *, image_widget: type[Widget] | None = None) -> None:
        super().__init__()
        self.config = config
        #: Draws a picture (textual-image's, where the terminal has Kitty or Sixel
        #: graphics); None: images are a line of text.
        self.image_widget = image_widget
        self.previews = True
        self.preview_path: str | None = None  # the picture in the preview pane
        #: Files sent and received here, by manifest id: their newest row.
        self.files: dict[str, FileStatus] = {}
        self.ctx = zmq.asyncio.Context()
        self.clients: dict[str, RpcClient] = {}
        self.me: rpc.IdentityInfo | None = None
        # Discovery's peer table and the bus's health table, mirrored (common.mirror).
        log = logging.getLogger("tazcom.chat")
        self.peer_feed = MirrorFeed(tables.PEERS, self.peers_changed, log=log,
                                    fetch=lambda req: self.call("discovery", req, 1.0))
        self.health_feed = MirrorFeed(tables.HEALTH, self.health_changed, log=log,
                                      fetch=lambda req: self.call("bus", req, 1.0))
        # The router's blocks, mutes and bans: whose messages are hidden.
        self.policy_feed = MirrorFeed(tables.POLICY, self.policy_changed, log=log,
                                      fetch=lambda req: self.call("router", req, 1.0))
        # The gateway's mesh clock: a warning line while this node's clock is corrected.
        self.clock_feed = MirrorFeed(tables.CLOCK, lambda _c: self.render_clock(), log=log,
                                     fetch=lambda req: self.call("gateway", req, 1.0))
        #: Services whose requests went unanswered (cleared when one is answered).
        self.unreachable: set[str] = set()
        #: Our private groups by id, invitations included (the router's group.list).
        self.groups: dict[str, rpc.GroupInfo] = {}
        self._groups_loaded = False
        self._bus_watch: tuple[int, int] | None = None  # (pid, pidfd) of the node's bus
        self.current = ROOM
        self.conversations: dict[str, list[Msg]] = {ROOM: []}
        self.loaded: set[str] = set()
        self.unread: dict[str, int] = {}
        self.node_state = "connecting"
        self.last_heartbeat = 0.0
        self._complete_state: tuple[str, list[str], int] | None = None
        self.ready_at: float | None = None

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield OptionList(id="conversations")
            with Vertical(id="right"):
                yield Static("", id="title")
                yield MessageView(id="messages")
                yield Vertical(id="preview")
        yield Static("", id="clock")
        yield Static("", id="status")
        yield Input(placeholder="message, or /help", id="input")

    async def on_mount(self) -> None:
        self.query_one("#input", Input).focus()
        self.render_status()
        self.follow_bus()
        self.set_interval(1.0, self.watchdog)
        await self.sync()

    # -- node access ------------------------------------------------------------------------

    def client(self, service: str) -> RpcClient:
        if service not in self.clients:
            self.clients[service] = RpcClient(self.ctx, self.config, service)
        return self.clients[service]

    @property
    def peers(self) -> dict[str, PeerInfo]:
        return self.peer_feed.core.items

    @property
    def services_down(self) -> set[str]:
        rows = self.health_feed.core.items
        return {name for name, row in rows.items() if row.state != "up"} | self.unreachable

    async def call(self, service: str, req: rpc.Request, timeout: float = 2.0,
                   retries: int = 1) -> Any:
        try:
            reply = await self.client(service).call(req, timeout=timeout, retries=retries)
        except TazcomError as e:
            if e.code == "unavailable" and service not in self.unreachable:
                self.unreachable.add(service)
                self.render_status()
            raise
        if service in self.unreachable:
            self.unreachable.discard(service)
            self.render_status()
        return reply

    async def sync(self) -> None:
        """(Re)load who we are, the peers, the services' health and the open conversation."""
        try:
            self.me = await self.call("identity", rpc.GetIdentity())
            self.peer_feed.take(await self.call("discovery", tables.PEERS.request))
            self.health_feed.take(await self.call("bus", tables.HEALTH.request))
        except TazcomError:
            self.node_state = "down"
            self.render_status()
            return
        with contextlib.suppress(TazcomError):  # the feed asks again when the router is back
            self.policy_feed.take(await self.call("router", tables.POLICY.request, 1.0))
        with contextlib.suppress(TazcomError):  # likewise the gateway
            self.clock_feed.take(await self.call("gateway", tables.CLOCK.request, 1.0))
        with contextlib.suppress(TazcomError):  # file.status events bring them after
            table = await self.call("router", rpc.ListFiles(), 1.0)
            self.files = {row.id: row for row in table.files}
        with contextlib.suppress(TazcomError):  # group.changed events ask again
            self.groups_loaded(await self.call("router", rpc.ListGroups(), 2.0))
        self.node_state = "up"
        self.last_heartbeat = time.monotonic()  # it answered: the watchdog starts from now
        self.loaded.clear()
        await self.open_conversation(self.current, force=True)
        self.render_conversations()
        self.render_status()
        if self.ready_at is None:
            self.ready_at = time.monotonic()

    async def load_history(self, conv: str, before: int | None = None,
                           before_id: bytes | None = None) -> list[Msg]:
        req = rpc.StoreHistory(conv=None if conv == ROOM else bytes.fromhex(conv),
                               limit=HISTORY_PAGE, before=before, before_id=before_id)
        reply = await self.call("store", req, timeout=5.0)
        out = []
        for m in reply.messages:
            if not m.own and self.hidden(m.origin.hex()):
                continue
            received = None if m.received is None else m.received / 1000
            if m.kind == KIND_FILE:  # a file's manifest: its line, where the store has it
                row = self.files.get(m.id.hex())
                if row is not None:
                    out.append(self.file_msg(row, received))
                continue
            out.append(Msg(id=m.id.hex(), origin=m.origin.hex(),
                           to=m.to.hex() if m.to else None, ts=m.ts / 1000, text=m.text or "",
                           own=m.own, status=m.status, reason=m.reason, received=received,
                           group=m.kind == KIND_GROUP))
        return out

    def with_files(self, conv: str, messages: list[Msg]) -> list[Msg]:
        """``messages`` and the conversation's files not among them, in time order (a
        file by when its author wrote it: the store may not list manifests)."""
        shown = {m.id for m in messages}
        extra = [self.file_msg(row) for row in self.files.values()
                 if file_conv(row) == conv and row.id not in shown
                 and (row.direction == "out" or not self.hidden(row.origin))]
        if not extra:
            return messages
        return sorted(messages + extra, key=lambda m: m.arrived)  # stable: history's order

    def file_msg(self, row: FileStatus, received: float | None = None) -> Msg:
        msg = Msg(id=row.id, origin=row.origin, to=row.to,
                  ts=row.sent / 1000 if row.sent else time.time(), text=row.name,
                  own=row.direction == "out", status=row.status, reason=row.reason,
                  received=received, file=row)
        self.measure(msg)
        return msg

    def measure(self, msg: Msg) -> None:
        """An image here in full: its pixels, read once from its header."""
        row = msg.file
        if row is not None and msg.image is None and is_image(row) and file_here(row):
            msg.image = image_size(row.path)

    def hidden(self, key: str) -> bool:
        """Blocked or muted here: its messages are not shown."""
        entry = self.policy_feed.core.items.get(key)
        return entry is not None and entry.policy in HIDDEN

    async def open_conversation(self, conv: str, force: bool = False) -> None:
        self.current = conv
        self.unread.pop(conv, None)
        view = self.query_one(MessageView)
        view.me = self.me.key if self.me else ""
        view.names = self.names()
        if force or conv not in self.loaded:
            try:
                history = self.with_files(conv, await self.load_history(conv))
                live = [m for m in self.conversations.get(conv, []) if m.system]
                self.conversations[conv] = history + live
                self.loaded.add(conv)
            except TazcomError:
                self.conversations.setdefault(conv, [])
        view.set_messages(self.conversations.get(conv, []))
        self.render_title()
        self.render_conversations()
        self.show_preview()

    def policy_changed(self, changes: list[Change]) -> None:
        """A key was blocked, muted or lifted: the open conversation is shown again from
        the store without (or with) its messages; the others when next opened."""
        self.loaded.clear()
        for conv, messages in self.conversations.items():
            self.conversations[conv] = [m for m in messages
                                        if m.system or m.own or not self.hidden(m.origin)]
        if self.ready_at is not None:
            self.call_later(self.open_conversation, self.current, True)
        self.render_conversations()

    def names(self) -> dict[str, str]:
        # a group's members, as the router knows them (one may be no peer of ours)
        names = {m.key: m.nickname for g in self.groups.values() for m in g.members
                 if m.nickname}
        names.update({k: p.nickname for k, p in self.peers.items()})
        if self.me:
            names[self.me.key] = self.me.nickname
        return names

    # -- the bus ------------------------------------------------------------------------------

    @work(exclusive=True, group="bus")
    async def follow_bus(self) -> None:
        bus = BusClient(self.ctx, self.config, "chat", publish=False)
        for prefix in ("chat.", "peer.", "mesh.", "service.", "clock.", "file.", "group."):
            bus.subscribe(prefix)
        try:
            while True:
                ev = await bus.recv()
                if ev is None:  # welcome: (re)connected to the bus, maybe after a restart
                    self.call_later(self.sync)
                    continue
                self.on_bus_event(ev)
        finally:
            bus.close()

    def on_bus_event(self, ev: Event) -> None:
        if isinstance(ev, ServiceHeartbeat | ServiceHealthChanged | PeerDiscovered | PeerUpdated
                      | PeerLost | PeerForgotten | PeerPolicy | ClockOffset):
            self.peer_feed.on_event(ev)
            self.health_feed.on_event(ev)
            self.policy_feed.on_event(ev)
            self.clock_feed.on_event(ev)
        if isinstance(ev, ServiceHeartbeat):
            self.last_heartbeat = time.monotonic()
            if self.node_state != "up":
                self.node_state = "up"
                self.render_status()
                self.call_later(self.sync)
        elif isinstance(ev, ServiceStopping) and ev.service == "bus":
            self.node_state = "down"  # the node is going away (or its bus restarting)
            self.render_status()
        elif isinstance(ev, ChatMessage):
            self.on_chat_message(ev)
        elif isinstance(ev, ChatStatus):
            self.on_chat_status(ev)
        elif isinstance(ev, FileStatus):
            self.on_file_status(ev)
        elif isinstance(ev, GroupChanged):
            self.refresh_groups()  # the event is a summary: the table has the members
        elif isinstance(ev, PeerKeyChanged):
            self.system(ROOM, f"KEY CHANGED: {ev.alert}")
            self.notify(safe(ev.alert), title="key changed", severity="warning", timeout=10,
                        markup=False)

    def on_chat_message(self, ev: ChatMessage) -> None:
        if not ev.own and self.hidden(ev.origin):
            return  # the router stops publishing them too; this covers the moment between
        # ev.ts: when the router published it, as it committed it (arrival, our clock)
        msg = Msg(id=ev.id, origin=ev.origin, to=ev.to, ts=ev.sent / 1000, text=ev.text,
                  own=ev.own, status=ev.status, received=ev.ts, group=ev.kind == "group")
        conv = msg.conv
        messages = self.conversations.setdefault(conv, [])
        if any(m.id == msg.id for m in messages[-50:]):
            return
        messages.append(msg)
        if conv == self.current:
            self.query_one(MessageView).add(msg)
        elif not msg.own:
            self.unread[conv] = self.unread.get(conv, 0) + 1
            self.render_conversations()
        if msg.group and conv not in self.groups:
            self.refresh_groups()  # a group we have not listed yet

    def on_chat_status(self, ev: ChatStatus) -> None:
        conv = ROOM if ev.to is None else ev.to
        if conv == self.current:  # the view holds the same Msg objects
            self.query_one(MessageView).update(ev.id, ev.status, ev.reason, ev.delivered,
                                               ev.members)
            return
        for msg in reversed(self.conversations.get(conv, [])):
            if msg.id == ev.id:
                msg.status, msg.reason = ev.status, ev.reason
                if ev.members is not None:
                    msg.delivered, msg.members = ev.delivered, ev.members
                break

    def on_file_status(self, row: FileStatus) -> None:
        """A file's row, from the bus or a request's answer: its line, new or updated."""
        if row.direction == "in" and self.hidden(row.origin):
            return
        self.files[row.id] = row
        conv = file_conv(row)
        messages = self.conversations.setdefault(conv, [])
        msg = next((m for m in reversed(messages) if m.id == row.id), None)
        view = self.query_one(MessageView)
        if msg is not None:
            msg.file, msg.status, msg.reason = row, row.status, row.reason
            self.measure(msg)
            if conv == self.current:  # the view holds the same Msg objects
                view.redraw(row.id)
                if view.selected == row.id:
                    self.show_preview()  # it may have just become a whole image
            return
        msg = self.file_msg(row, time.time())
        messages.append(msg)
        if conv == self.current:
            view.add(msg)
            self.show_preview()
        elif not msg.own:
            self.unread[conv] = self.unread.get(conv, 0) + 1
            self.render_conversations()

    def health_changed(self, changes: list[Change]) -> None:
        bus = self.health_feed.core.items.get("bus")
        if bus is not None and bus.pid is not None and bus.state == "up":
            self.watch_bus(bus.pid)
        self.render_status()

    def watch_bus(self, pid: int) -> None:
        """Know at once when the node's bus process ends (a kill says nothing on the bus)."""
        if self._bus_watch is not None and self._bus_watch[0] == pid:
            return
        self.unwatch_bus()
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return  # not Linux, or gone: heartbeats will tell
        self._bus_watch = (pid, fd)
        asyncio.get_running_loop().add_reader(fd, self.bus_ended)

    def bus_ended(self) -> None:
        self.unwatch_bus()
        self.node_state = "down"
        self.render_status()

    def unwatch_bus(self) -> None:
        if self._bus_watch is not None:
            fd = self._bus_watch[1]
            self._bus_watch = None
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def peers_changed(self, changes: list[Change]) -> None:
        # the first snapshot lists everyone: no "joined" for them
        for change in changes if self.ready_at is not None else ():
            old, peer = change.old, change.new
            if peer is None:
                continue
            if old is None or (old.state == "offline") != (peer.state == "offline"):
                verb = "left" if peer.state == "offline" else "joined"
                self.system(ROOM, f"{peer.nickname} ({peer.fingerprint}) {verb}")
            elif old.nickname != peer.nickname:
                self.system(ROOM, f"{old.nickname} is now known as {peer.nickname}")
        self.query_one(MessageView).names = self.names()
        self.render_conversations()

    def system(self, conv: str, text: str) -> None:
        msg = Msg(id="", origin="", to=None, ts=time.time(), text=text, system=True)
        self.conversations.setdefault(conv, []).append(msg)
        if conv == self.current:
            self.query_one(MessageView).add(msg)

    # -- private groups ------------------------------------------------------------------------

    def listed_groups(self) -> list[rpc.GroupInfo]:
        """The groups beside the room: those we are in, and the open one (left, say)."""
        shown = [g for g in self.groups.values()
                 if g.role in GROUP_ACTIVE or g.group == self.current]
        return sorted(shown, key=lambda g: (g.name.lower(), g.group))

    def group_name(self, gid: str) -> str:
        g = self.groups.get(gid)
        return g.name if g is not None and g.name else gid[:8]

    def who(self, key: str, nickname: str = "") -> str:
        """A member as a line says it: its nickname (the peer table's, else the router's)
        and fingerprint."""
        peer = self.peers.get(key)
        name = peer.nickname if peer is not None else nickname
        fp = fingerprint(bytes.fromhex(key))
        return f"{name} ({fp})" if name else fp

    @work(exclusive=True, group="groups")
    async def refresh_groups(self) -> None:
        with contextlib.suppress(TazcomError):  # the next group.changed (or sync) asks again
            self.groups_loaded(await self.call("router", rpc.ListGroups(), 2.0))

    def groups_loaded(self, table: rpc.GroupTable) -> None:
        """The router's group table: what changed is said (at the first load only the
        invitations waiting), and the list shows it."""
        first = not self._groups_loaded
        self._groups_loaded = True
        fresh = {g.group: g for g in table.groups}
        for gid in [g for g in self.groups if g not in fresh]:
            old = self.groups.pop(gid)
            if old.role == "invited":
                self.settle_invitation(gid, "withdrawn")
        for info in fresh.values():
            self.apply_group(info, quiet=first)
        self.groups_shown()

    def groups_shown(self) -> None:
        self.query_one(MessageView).names = self.names()
        self.render_conversations()
        if self.current in self.groups:
            self.render_title()

    def apply_group(self, info: rpc.GroupInfo, quiet: bool = False) -> None:
        """One group's new row (group.list, or a request's answer); what changed is said
        in its conversation, an invitation in the room (``quiet``: invitations only)."""
        gid, name = info.group, info.name
        old = self.groups.get(gid)
        self.groups[gid] = info
        if info.role == "invited":
            if old is None or old.role != "invited":
                self.invitation(info, notify=not quiet)
            return
        if old is not None and old.role == "invited":
            self.settle_invitation(gid, {"left": "declined"}.get(info.role, info.role)
                                   if info.role not in GROUP_ACTIVE else "accepted")
        if quiet:
            return
        if old is None:
            if info.role == "admin":
                self.system(gid, f"you created the private group {name}: only its members "
                            "read it; /invite NICK adds people")
            return
        if old.role not in GROUP_ACTIVE and info.role in GROUP_ACTIVE:
            me = self.me.key if self.me else ""
            others = ", ".join(self.who(m.key, m.nickname) for m in info.members
                               if m.role == "member" and m.key != me)
            self.system(gid, f"you joined {name}" + (f" with {others}" if others else ""))
        elif old.role in GROUP_ACTIVE and info.role == "removed":
            text = f"you were removed from {name}: you no longer read what is written there"
            self.system(gid, text)
            if self.current != gid:
                self.system(ROOM, text)
            self.notify(safe(text), title="private group", severity="warning", timeout=10,
                        markup=False)
        elif old.role in GROUP_ACTIVE and info.role == "left":
            self.system(gid, f"you left {name}")
        elif old.role in GROUP_ACTIVE and info.role in GROUP_ACTIVE:
            self.member_changes(old, info)

    def member_changes(self, old: rpc.GroupInfo, new: rpc.GroupInfo) -> None:
        me = self.me.key if self.me else ""
        before = {m.key: m for m in old.members}
        after = {m.key: m for m in new.members}
        gid, name = new.group, new.name
        for key, m in after.items():
            b = before.get(key)
            if key == me or (b is not None and b.role == m.role):
                continue
            who = self.who(key, m.nickname)
            if m.role == "invited":
                self.system(gid, f"{who} is invited to {name} (a member once they accept)")
            else:
                self.system(gid, f"{who} joined {name}")
        for key, b in before.items():
            if key in after or key == me:
                continue
            who = self.who(key, b.nickname)
            if b.role == "invited":
                self.system(gid, f"{who} is no longer invited to {name}")
            else:
                self.system(gid, f"{who} is no longer a member of {name}"
                            + (": new keys, they cannot read what follows"
                               if new.epoch > old.epoch else ""))
        if old.role != new.role and new.role == "admin":
            self.system(gid, f"you are now an admin of {name}")

    def invitation(self, info: rpc.GroupInfo, notify: bool) -> None:
        """An invitation: a line of the room, to accept or decline."""
        if info.invited_by is not None and self.hidden(info.invited_by):
            return  # from a key blocked or muted here: /groups still lists it
        by = self.who(info.invited_by) if info.invited_by else "someone"
        members = sum(1 for m in info.members if m.role == "member")
        text = (f"{by} invites you to the private group {info.name} ({members} member"
                f"{'s' if members != 1 else ''})")
        messages = self.conversations.setdefault(ROOM, [])
        n = sum(1 for m in messages if m.invite == info.group)
        msg = Msg(id=f"{INVITE_ID}{info.group}:{n}", origin="", to=None, ts=time.time(),
                  text=text, system=True, invite=info.group, status="pending",
                  reason=info.name)
        messages.append(msg)
        if self.current == ROOM:
            self.query_one(MessageView).add(msg)
        if notify:
            self.notify(safe(text) + f": /accept {safe(info.name)}", title="invitation",
                        timeout=10, markup=False)

    def settle_invitation(self, gid: str, status: str) -> None:
        """The invitation lines of ``gid`` say what became of it."""
        view = self.query_one(MessageView)
        for msg in self.conversations.get(ROOM, []):
            if msg.invite == gid and msg.status == "pending":
                msg.status = status
                if self.current == ROOM:
                    view.redraw(msg.id)

    def find_group(self, query: str, roles: tuple[str, ...] = ()) -> rpc.GroupInfo | None:
        """A group named by the user: its name (any case), or a prefix of its id; among
        those where our role is one of ``roles`` (all if empty)."""
        groups = [g for g in self.groups.values() if not roles or g.role in roles]
        q = query.strip()
        found = [g for g in groups if g.name == q] or \
            [g for g in groups if g.name.lower() == q.lower()]
        if not found and len(q) >= 4:
            found = [g for g in groups if g.group.startswith(q.lower())]
        if len(found) == 1:
            return found[0]
        if found:
            ids = ", ".join(f"{g.name} {g.group[:8]}" for g in found)
            self.system(self.current, f"{query!r} is ambiguous: {ids} (name it by its id)")
        else:
            self.system(self.current, f"no group {query!r} here (/groups lists them)")
        return None

    def open_group(self, cmd: str) -> rpc.GroupInfo | None:
        g = self.groups.get(self.current)
        if g is None:
            self.system(self.current, f"{cmd} acts on the open group: open one (Ctrl+N), or "
                        "create one with /group NAME")
        return g

    async def group_request(self, make: Callable[[], rpc.Request], what: str,
                            conv: str | None = None) -> rpc.GroupInfo | None:
        """A group request; its answer is applied, a refusal said (``conv``, else the
        open conversation). Sent once: a retry could do it twice (create) or be refused
        as done already (invite, accept)."""
        try:
            answer = await self.call("router", make(), 5.0, retries=0)
        except TazcomError as e:
            self.system(conv or self.current, f"could not {what} ({e.code}): {e.message}")
            return None
        self.apply_group(answer.info)
        self.groups_shown()
        return answer.info

    async def create_group(self, name: str) -> None:
        if not name:
            self.system(self.current, "usage: /group NAME (a private group, you its admin)")
            return
        # one client_id for every try: a retried create names the same group
        cid = os.urandom(16)
        info = await self.group_request(lambda: rpc.CreateGroup(name=name, client_id=cid),
                                        f"create the group {name}")
        if info is not None:
            await self.open_conversation(info.group)

    async def invite(self, query: str) -> None:
        g = self.open_group("/invite")
        if g is None:
            return
        if not query:
            self.system(self.current, "usage: /invite NICK (to the open group)")
            return
        peer = self.find(query)
        if peer is not None:
            await self.group_request(lambda: rpc.InviteToGroup(group=g.group, peer=peer.key),
                                     f"invite {peer.nickname} to {g.name}", g.group)

    async def kick(self, query: str) -> None:
        g = self.open_group("/kick")
        if g is None:
            return
        if not query:
            self.system(self.current, "usage: /kick NICK (from the open group; admins)")
            return
        me = self.me.key if self.me else ""
        members = [Target.of(m.key, (self.peers[m.key].nickname if m.key in self.peers
                                     else m.nickname) or None)
                   for m in g.members if m.key != me]
        try:
            target = match_peer(query, members)
        except PeerNotFound:
            self.system(self.current, f"no member of {g.name} matches {query!r}")
            return
        except PeerAmbiguous as e:
            names = ", ".join(str(t) for t in e.candidates)
            self.system(self.current, f"{query!r} is ambiguous: {names}")
            return
        await self.group_request(lambda: rpc.RemoveFromGroup(group=g.group, peer=target.key),
                                 f"remove {target} from {g.name}", g.group)

    async def leave(self, query: str) -> None:
        g = self.find_group(query, GROUP_ACTIVE) if query else self.open_group("/leave")
        if g is not None:
            await self.group_request(lambda: rpc.LeaveGroup(group=g.group),
                                     f"leave {g.name}", g.group)

    async def answer_invitation(self, what: str, query: str) -> None:
        """``/accept`` or ``/decline``: the invitation named, else the only one waiting."""
        if query:
            g = self.find_group(query, ("invited",))
        else:
            waiting = [g for g in self.groups.values() if g.role == "invited"]
            g = waiting[0] if len(waiting) == 1 else None
            if g is None:
                self.system(self.current, f"usage: /{what} NAME (an invitation: /groups)"
                            if waiting else "no invitation is waiting")
        if g is not None:
            await self.reply_invitation(what, g)

    async def reply_invitation(self, what: str, g: rpc.GroupInfo) -> None:
        make = (lambda: rpc.AcceptGroup(group=g.group)) if what == "accept" else \
            (lambda: rpc.DeclineGroup(group=g.group))
        info = await self.group_request(make, f"{what} the invitation to {g.name}")
        if info is None:
            return
        if what == "accept":  # in: its conversation opens
            await self.open_conversation(info.group)
            self.action_focus_input()
        else:
            self.system(self.current, f"declined the invitation to {g.name}")

    async def action_invitation(self, what: str) -> None:
        """``a`` / ``d`` on the selected (else the newest pending) invitation line."""
        msg = self.query_one(MessageView).selected_invitation()
        if msg is None:
            self.system(self.current, "no invitation here (they are lines of the room)")
            return
        g = self.groups.get(msg.invite)
        if g is None or g.role != "invited":
            self.system(self.current, f"the invitation to {msg.reason} is no longer waiting")
            return
        await self.reply_invitation(what, g)

    def list_members(self) -> None:
        g = self.open_group("/members")
        if g is None:
            return
        for m in g.members:
            role = "admin" if m.admin else ("invited" if m.role == "invited" else "member")
            me = " (you)" if self.me and m.key == self.me.key else ""
            self.system(self.current, f"{self.who(m.key, m.nickname)}: {role}{me}")

    def list_groups(self) -> None:
        if not self.groups:
            self.system(self.current, "no private groups yet (/group NAME creates one)")
        for g in sorted(self.groups.values(), key=lambda g: g.name.lower()):
            members = sum(1 for m in g.members if m.role == "member")
            hint = f": /accept {g.name} or /decline {g.name}" if g.role == "invited" else ""
            self.system(self.current, f"{g.name} {g.group[:8]}: {g.role}, {members} member"
                        f"{'s' if members != 1 else ''}{hint}")

    def watchdog(self) -> None:
        # a killed bus says nothing: after three heartbeat intervals of silence
        silent = time.monotonic() - self.last_heartbeat > 3 * self.config.heartbeat_interval + 0.5
        if self.node_state == "up" and silent:
            self.node_state = "down"
            self.render_status()

    # -- rendering ------------------------------------------------------------------------------

    def conversation_keys(self) -> list[str]:
        order = {"verified": 0, "connected": 1, "discovered": 1, "mesh": 2, "offline": 3}
        peers = sorted(self.peers.values(), key=lambda p: (order.get(p.state, 4),
                                                           p.nickname.lower()))
        return [ROOM] + [g.group for g in self.listed_groups()] + [p.key for p in peers]

    def render_conversations(self) -> None:
        options = []
        for key in self.conversation_keys():
            unread = self.unread.get(key, 0)
            badge = f" ({unread})" if unread else ""
            group = self.groups.get(key)
            if key == ROOM:
                prompt = Text.assemble(("# room", "bold"), (badge, "bold yellow"))
            elif group is not None:
                members = sum(1 for m in group.members if m.role == "member")
                gone = "" if group.role in GROUP_ACTIVE else f" {group.role}"
                prompt = Text.assemble((GROUP_MARK, "bold"), (safe(group.name[:16]), "bold"),
                                       (f" {members}", "dim"), (gone, "red"),
                                       (badge, "bold yellow"))
            else:
                p = self.peers[key]
                mark = STATE_MARKS.get(p.state, "?")
                hops = f" {p.hops}h" if p.state == "mesh" and p.hops else ""
                alert = " ⚠" if p.alert else ""
                policy = self.policy_feed.core.items.get(key)
                prompt = Text.assemble(
                    (f"{mark} ", "green" if p.state == "verified" else "dim"),
                    (safe(p.nickname[:14]), _nick_style(key)), (f" {p.fingerprint[:4]}", "dim"),
                    (hops, "dim"), (POLICY_MARKS.get(policy.policy, "") if policy else "", "red"),
                    (alert, "bold red"), (badge, "bold yellow"))
            options.append(Option(prompt, id=key))
        widget = self.query_one("#conversations", OptionList)
        widget.clear_options()
        widget.add_options(options)
        keys = [o.id for o in options]
        if self.current in keys:
            widget.highlighted = keys.index(self.current)

    def render_title(self) -> None:
        group = self.groups.get(self.current)
        if self.current == ROOM:
            title = "# room: everyone on the mesh"
        elif group is not None:
            members = sum(1 for m in group.members if m.role == "member")
            invited = len(group.members) - members
            title = (f"{GROUP_MARK}{group.name}: private group, {members} member"
                     f"{'s' if members != 1 else ''}" + (f", {invited} invited" if invited else "")
                     + {"admin": "; you are its admin", "left": "; you left it",
                        "removed": "; you were removed"}.get(group.role, ""))
        else:
            p = self.peers.get(self.current)
            title = (f"{p.nickname}  {p.fingerprint}  {p.state}" if p
                     else self.current[:16])
            if p and p.alert:
                title += "  KEY CHANGED: run /trust after comparing safety numbers"
        self.query_one("#title", Static).update(Text(safe(title)))  # Text: never markup

    def render_clock(self) -> None:
        """A warning line while the node corrects its clock by the mesh's (offset not 0)."""
        from tazcom.common.clock import describe

        row = self.clock_feed.core.items.get(tables.CLOCK_KEY)
        line = self.query_one("#clock", Static)
        shown = row is not None and row.offset != 0
        if line.display != shown:  # a layout pass only when it appears or goes
            line.display = shown
        if row is not None and row.offset:
            line.update(Text(f"⚠ this device's clock is {describe(row.offset)} (median of "
                             f"{row.neighbours} neighbours); messages are stamped with mesh "
                             f"time"))

    def render_status(self) -> None:
        who = f"{self.me.nickname} ({self.me.fingerprint})" if self.me else "?"
        if self.node_state == "up" and not self.services_down:
            state = Text("node up", "green")
        elif self.node_state == "up":
            state = Text(f"restarting: {', '.join(sorted(self.services_down))}", "yellow")
        elif self.node_state == "connecting":
            state = Text("connecting to the node…", "yellow")
        else:
            state = Text.assemble(("node not running or not answering", "red"),
                                  " (start it: supervisord -c supervisord.conf); retrying")
        self.query_one("#status", Static).update(  # Text, never markup: the nickname
            Text.assemble(safe(who), "  ", state, "  ", ("/help  Ctrl+Q", "dim")))

    # -- actions ----------------------------------------------------------------------------------

    async def _switch(self, step: int) -> None:
        keys = self.conversation_keys()
        i = keys.index(self.current) if self.current in keys else 0
        await self.open_conversation(keys[(i + step) % len(keys)])

    async def action_next_conversation(self) -> None:
        await self._switch(1)

    async def action_prev_conversation(self) -> None:
        await self._switch(-1)

    def action_page_up(self) -> None:
        view = self.query_one(MessageView)
        if view.scroll_y <= 0 and view.messages:
            self.load_older()
        view.scroll_page_up()

    def action_page_down(self) -> None:
        self.query_one(MessageView).scroll_page_down()

    def action_focus_files(self) -> None:
        self.query_one(MessageView).focus()

    def action_focus_input(self) -> None:
        self.query_one("#input", Input).focus()

    def action_file(self, what: str) -> None:
        """``g``/``o``/``s``/``v`` on the selected file line (and /get, /open, /save)."""
        if what == "preview":
            self.previews = not self.previews
            self.system(self.current, f"image previews {'on' if self.previews else 'off'}")
            self.show_preview()
            return
        msg = self.query_one(MessageView).selected_file()
        if msg is None or msg.file is None:
            self.system(self.current, "no file in this conversation (/file PATH sends one)")
            return
        row = self.files.get(msg.id, msg.file)
        name = row.name
        if what == "get":
            if row.direction == "out":
                self.system(self.current, f"{name} is your own file")
            elif row.status in ("received", "receiving"):
                self.system(self.current, f"{name} is {row.status}"
                            + (f": {row.path}" if row.status == "received" else ""))
            else:
                self.get_file(row)
        elif not file_here(row):
            self.system(self.current, f"{name} is not here yet ({row.status}"
                        + ("; g gets it" if row.status in ("offered", "failed") else "") + ")")
        elif what == "open":
            opener = shutil.which("xdg-open")
            if opener is None:
                self.system(self.current, f"{name} is at {row.path} (no xdg-open here)")
                return
            # its own session, no terminal: the viewer must not draw over the app
            subprocess.Popen([opener, row.path], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
            self.system(self.current, f"opening {name} ({row.path})")
        else:  # save: where it is, and on the clipboard (OSC 52, where the terminal lets it)
            self.copy_to_clipboard(row.path)
            self.system(self.current, f"{name} is at {row.path} (copied to the clipboard)")

    def send_file(self, arg: str) -> None:
        """``/file PATH``: checked here for a plain error at once; the router reads it."""
        text = arg.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]  # a pasted path with spaces, quoted
        if not text:
            self.system(self.current, "usage: /file PATH (sent to this conversation)")
            return
        path = Path(text).expanduser().absolute()
        if not path.exists():
            self.system(self.current, f"no such file: {path}")
        elif not path.is_file():
            self.system(self.current, f"not a file: {path}")
        else:
            self.run_worker(self._send_file(path, self.current), group="files")

    async def _send_file(self, path: Path, conv: str) -> None:
        from tazcom.cli import FILE_ERRORS, _send_timeout

        try:
            req = rpc.SendFile(client_id=os.urandom(16), path=str(path),
                               to=None if conv == ROOM else bytes.fromhex(conv))
            # one client_id for every attempt: a retry never sends the file twice
            reply = await self.call("router", req, timeout=_send_timeout(path))
        except TazcomError as e:
            self.system(conv, f"NOT SENT ({FILE_ERRORS.get(e.code, e.code)}): {path.name}: "
                        f"{e.message}")
            return
        self.on_file_status(reply.file)

    def get_file(self, row: FileStatus) -> None:
        self.run_worker(self._get_file(row), group="files")

    async def _get_file(self, row: FileStatus) -> None:
        from tazcom.cli import FILE_ERRORS

        try:
            reply = await self.call("router", rpc.GetFile(file=row.id), timeout=5.0)
        except TazcomError as e:
            self.system(file_conv(row), f"could not get {row.name} "
                        f"({FILE_ERRORS.get(e.code, e.code)}): {e.message}")
            return
        self.on_file_status(reply.file)

    # -- image previews ----------------------------------------------------------------------

    def on_message_view_file_selected(self, _message: MessageView.FileSelected) -> None:
        self.show_preview()

    def show_preview(self) -> None:
        """The selected (else newest) file line's picture under the conversation, when it
        is an image here in full and this terminal draws pictures; else nothing."""
        pane = self.query_one("#preview", Vertical)
        msg = self.query_one(MessageView).selected_file()
        row = msg.file if msg is not None else None
        wanted = (self.image_widget is not None and self.previews and row is not None
                  and is_image(row) and file_here(row))
        if not wanted or row is None:
            pane.display = False
            return
        if self.preview_path != row.path:
            self.load_preview(row.path)
        else:
            pane.display = True

    @work(thread=True, exclusive=True, group="preview")
    def load_preview(self, path: str) -> None:
        # decoded off the event loop: a big photo takes a moment, the chat goes on
        try:
            from PIL import Image
        except ImportError:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as im:
                    im.draft("RGB", (PREVIEW_PIXELS, PREVIEW_PIXELS))  # JPEG: decode smaller
                    im.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
                    picture = im.copy()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return  # not an image after all: the line says what it is
        if not get_current_worker().is_cancelled:  # another file was selected meanwhile
            self.call_from_thread(self._set_preview, path, picture)

    def _set_preview(self, path: str, picture: Any) -> None:
        assert self.image_widget is not None
        msg = self.query_one(MessageView).selected_file()
        if msg is None or msg.file is None or msg.file.path != path:
            return  # the selection moved on while it was decoded
        pane = self.query_one("#preview", Vertical)
        pane.remove_children()
        pane.mount(self.image_widget(picture))
        self.preview_path = path
        pane.display = True

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    @work(exclusive=True, group="older")
    async def load_older(self) -> None:
        view = self.query_one(MessageView)
        # a message of the store's: a file line may not be one (placed by its time)
        oldest = next((m for m in view.messages if not m.system and m.id and m.file is None),
                      None)
        if oldest is None:
            return
        with contextlib.suppress(TazcomError):
            # before_id: exact, also among messages that arrived in the same millisecond
            older = await self.load_history(self.current, before=int(oldest.arrived * 1000) + 1,
                                            before_id=bytes.fromhex(oldest.id))
            if older:
                self.conversations[self.current] = older + self.conversations[self.current]
                view.prepend(older)

    def action_complete(self) -> None:
        box = self.query_one("#input", Input)
        value, cursor = box.value, box.cursor_position
        start = value.rfind(" ", 0, cursor) + 1
        word = value[start:cursor]
        if self._complete_state and self._complete_state[0] == value:
            _, matches, i = self._complete_state
            i = (i + 1) % len(matches)
            prefix_start = start
            word_done = matches[i]
        else:
            matches = sorted({p.nickname for p in self.peers.values()
                              if p.nickname.lower().startswith(word.lower())})
            if not word or not matches:
                return
            i = 0
            prefix_start = start
            word_done = matches[0]
        new = value[:prefix_start] + word_done + (" " if start else ": ")
        if start == 0 and value.startswith("/"):
            return
        box.value = new + value[cursor:]
        box.cursor_position = len(new)
        self._complete_state = (box.value, matches, i)

    async def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            await self.open_conversation(event.option.id)
            self.query_one("#input", Input).focus()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        self._complete_state = None
        if not text:
            return
        if text.startswith("/"):
            await self.command(text)
        else:
            await self.post(None if self.current == ROOM else self.current, text)

    async def post(self, to: str | None, text: str, typed: str | None = None) -> None:
        """Post ``text`` (to a group: ``group.say``); when it is refused (rate_limited,
        blocked, not_member...) say why and put what was typed (``typed``, else ``text``)
        back in the input line."""
        try:
            req: rpc.Request
            if to is not None and to in self.groups:
                req = rpc.GroupSay(client_id=os.urandom(16), group=to, text=text)
            else:
                req = rpc.Post(client_id=os.urandom(16), to=bytes.fromhex(to) if to else None,
                               text=text)
            await self.call("router", req, timeout=5.0)
        except TazcomError as e:
            box = self.query_one("#input", Input)
            kept = not box.value
            if kept:
                box.value = typed if typed is not None else text
                box.cursor_position = len(box.value)
            why = {"rate_limited": "too many messages"}.get(e.code, e.code)
            self.system(self.current, f"NOT SENT ({why}): {e.message}"
                        + ("; your text is back in the input line" if kept else ""))

    def find(self, query: str) -> PeerInfo | None:
        try:
            return match_peer(query, list(self.peers.values()))
        except PeerNotFound:
            self.system(self.current, f"no peer matches {query!r}")
        except PeerAmbiguous as e:
            names = ", ".join(f"{p.nickname} {p.fingerprint}" for p in e.candidates)
            self.system(self.current, f"{query!r} is ambiguous: {names}")
        return None

    async def command(self, line: str) -> None:
        cmd, _, rest = line.partition(" ")
        rest = rest.strip()
        cmd = cmd.lower()
        if cmd in ("/quit", "/exit"):
            self.exit()
        elif cmd == "/help":
            for h in HELP:
                self.system(self.current, h)
        elif cmd == "/msg":
            nick, _, text = rest.partition(" ")
            peer = self.find(nick) if nick else None
            if peer is not None and text.strip():
                await self.open_conversation(peer.key)
                await self.post(peer.key, text.strip(), typed=line)
            elif peer is not None or not nick:
                self.system(self.current, "usage: /msg NICK TEXT")
        elif cmd == "/nick":
            await self.set_nick(rest)
        elif cmd == "/file":
            self.send_file(rest)
        elif cmd in ("/get", "/open", "/save"):
            self.action_file(cmd[1:])
        elif cmd == "/group":
            await self.create_group(rest)
        elif cmd == "/groups":
            self.list_groups()
        elif cmd == "/invite":
            await self.invite(rest)
        elif cmd == "/kick":
            await self.kick(rest)
        elif cmd == "/leave":
            await self.leave(rest)
        elif cmd == "/members":
            self.list_members()
        elif cmd in ("/accept", "/decline"):
            await self.answer_invitation(cmd[1:], rest)
        elif cmd == "/peers":
            if not self.peers:
                self.system(self.current, "no peers seen yet")
            for p in sorted(self.peers.values(), key=lambda p: p.nickname.lower()):
                hops = f", {p.hops} hops" if p.state == "mesh" and p.hops else ""
                self.system(self.current, f"{p.nickname} {p.fingerprint}: {p.state}{hops}"
                            + (" KEY CHANGED" if p.alert else ""))
        elif cmd == "/whois":
            peer = self.find(rest) if rest else None
            if peer is not None and self.me:
                number = safety_number(bytes.fromhex(self.me.key), bytes.fromhex(peer.key))
                for text in (f"{peer.nickname}: {peer.state}, fingerprint {peer.fingerprint}",
                             f"key {peer.key}", f"safety number {number}",
                             "compare it aloud; they see the same number for you"):
                    self.system(self.current, text)
            elif not rest:
                self.system(self.current, "usage: /whois NICK")
        elif cmd in POLICY_COMMANDS:
            await self.set_policy(rest, *POLICY_COMMANDS[cmd])
        elif cmd == "/trust":
            peer = self.find(rest) if rest else None
            if peer is not None:
                try:
                    await self.call("gateway", rpc.Trust(key=peer.key, nickname=peer.nickname))
                    self.system(self.current, f"trusted {peer.nickname} ({peer.fingerprint})")
                except TazcomError as e:
                    self.system(self.current, f"could not trust: {e.message}")
            elif not rest:
                self.system(self.current, "usage: /trust NICK")
        else:
            self.system(self.current, f"unknown command {cmd}; /help lists them")

    async def set_policy(self, query: str, policy: str, remove: bool) -> None:
        verb = "/un" + policy if remove else "/" + policy
        if not query:
            self.system(self.current, f"usage: {verb} NICK (or a fingerprint or key)")
            return
        # the peers, the keys already blocked or muted, or a full key never seen
        known = {k: Target(k, p.fingerprint, p.nickname) for k, p in self.peers.items()}
        for key in self.policy_feed.core.items:
            known.setdefault(key, Target.of(key))
        try:
            target = resolve_target(query, known.values())
        except PeerNotFound:
            self.system(self.current, f"no peer matches {query!r}")
            return
        except PeerAmbiguous as e:
            names = ", ".join(str(t) for t in e.candidates)
            self.system(self.current, f"{query!r} is ambiguous: {names}")
            return
        try:
            self.policy_feed.take(await self.call(
                "router", rpc.SetPolicy(key=target.key, policy=policy, remove=remove)))
        except TazcomError as e:
            self.system(self.current, f"could not {verb[1:]} {target}: {e.message}")
            return
        what = {("block", False): ": nothing it writes is shown, stored or relayed here",
                ("mute", False): ": its messages are hidden here (still relayed)"}
        self.system(self.current, f"{DONE[policy, remove]} {target}"
                    + what.get((policy, remove), ""))

    async def set_nick(self, name: str) -> None:
        if not name:
            self.system(self.current, "usage: /nick NAME")
            return
        try:
            self.me = await self.call("identity", rpc.SetNickname(nickname=name))
            self.system(self.current, f"you are now {self.me.nickname}")
            self.render_status()
        except TazcomError as e:
            self.system(self.current, f"could not change nickname: {e.message}")

    async def on_unmount(self) -> None:
        self.unwatch_bus()
        for client in self.clients.values():
            client.close()
        self.ctx.destroy(linger=0)


def image_widget() -> type[Widget] | None:
    """textual-image's widget where this terminal draws Kitty or Sixel graphics, else
    None (images are then a line of text). Called before the app starts: the package asks
    the terminal what it can do, which it cannot once Textual reads the keyboard."""
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        return None
    try:
        from textual_image import renderable
        from textual_image.renderable.halfcell import Image as HalfcellImage
        from textual_image.renderable.unicode import Image as UnicodeImage

        # what it picked: a graphics protocol (Sixel, Kitty's; newer versions know more),
        # or half blocks or text, where the placeholder line says more
        if renderable.Image in (HalfcellImage, UnicodeImage):
            return None
        from textual_image.widget import Image
    except ImportError:
        return None
    except Exception:  # noqa: BLE001 - an optional package probing the terminal: no pictures
        return None
    return Image  # type: ignore[no-any-return]


def run_chat(config: Config) -> int:
    ChatApp(config, image_widget=image_widget()).run()
    return 0


