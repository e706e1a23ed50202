"""docs/protocol.md documents every event, request, record and field that common/ defines."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tazcom import cli
from tazcom.common import announce, envelope, events, invite, messages, routing, rpc
from tazcom.common.events import PeerInfo
from tazcom.common.keys import SIGNING_DOMAINS
from tazcom.common.peers import Target
from tazcom.common.schema import fields as schema_fields
from tazcom.common.version import PROTOCOL_VERSION

from .examples import build

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
ENVELOPE = {"src", "ts"}


def section(title_pattern: str) -> str:
    m = re.search(rf"^### {title_pattern}.*?$(.*?)(?=^### |^## |\Z)", DOC, re.M | re.S)
    assert m, f"docs/protocol.md has no section '### {title_pattern}'"
    return m.group(1)


def names(cls: type) -> list[str]:
    return [f.name for f in schema_fields(cls) if f.name not in ENVELOPE]


def test_protocol_version_matches() -> None:
    assert f"Protocol version: **{PROTOCOL_VERSION}**" in DOC


@pytest.mark.parametrize("topic", sorted(events.EVENTS))
def test_every_event_and_field_documented(topic: str) -> None:
    cls = events.EVENTS[topic]
    m = re.search(rf"^### `{re.escape(topic)}` \(v(\d+)\)", DOC, re.M)
    assert m, f"no section for event {topic}"
    assert int(m.group(1)) == cls.V
    body = section(f"`{re.escape(topic)}`")
    for name in names(cls):
        assert f"`{name}`" in body, f"{topic}.{name} undocumented"


@pytest.mark.parametrize("op", sorted(rpc.REQUESTS))
def test_every_request_and_reply_field_documented(op: str) -> None:
    cls = rpc.REQUESTS[op]
    body = section(f"`{re.escape(op)}`")
    for name in names(cls) + names(cls.REPLY):
        assert f"`{name}`" in body, f"{op}: field {name} undocumented"


@pytest.mark.parametrize("record", [events.PeerInfo, events.ServiceHealth])
def test_records_documented(record: type) -> None:
    body = section(f"Record {record.__name__}")
    for name in names(record):
        assert f"`{name}`" in body, f"{record.__name__}.{name} undocumented"


# -- reject codes ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("common", "services", "tazcom")
CODE_RE = re.compile(r"[a-z][a-z0-9_]{1,47}")
#: Names of parameters and fields that hold a reject code.
CODE_NAMES = {"code", "reason"}
#: A function whose docstring says this returns a reject code (``return "too_old"``).
RETURNS_CODE = re.compile(r"reject code|reason to refuse", re.I)


def _str(node: ast.AST | None) -> list[str]:
    """String literals of a constant, a tuple/list/set of them, or a ``Literal[...]``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for e in node.elts for s in _str(e)]
    if isinstance(node, ast.Subscript) and _name(node.value) == "Literal":
        return _str(node.slice)
    if isinstance(node, ast.BinOp):  # Literal[...] | None
        return _str(node.left) + _str(node.right)
    return []


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _target(node: ast.AST) -> str | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        return _name(node.targets[0])
    if isinstance(node, ast.AnnAssign):
        return _name(node.target)
    return None


def scan_reject_codes() -> dict[str, set[str]]:
    """Every reject code literal in the code: code -> the files that use it.

    Found where a code is written: ``code="..."`` / ``reason="..."`` keywords, ``code =
    "..."`` class attributes (error classes), the code/reason argument of any function
    that takes one (``reject(source, "busy")``, ``drop(...)``, ``close("duplicate", ...)``,
    ``_fail("bad_kind", ...)``), ``Literal[...]`` annotations and aliases of reasons and
    codes, ``e.code == "..."`` tests, and the ``return "..."`` of a function whose
    docstring says it returns a reject code.
    """
    trees = {p: ast.parse(p.read_text(), str(p))
             for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py"))}
    # positional index of the code/reason parameter of every function, and of the
    # code/reason field of every dataclass (``Rejected(source, reason)``), that has one
    positions: dict[str, set[int]] = {}
    for tree in trees.values():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                params = [a.arg for a in fn.args.posonlyargs + fn.args.args
                          if a.arg not in ("self", "cls")]
            elif isinstance(fn, ast.ClassDef):
                params = [s.target.id for s in fn.body
                          if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
            else:
                continue
            for i, a in enumerate(params):
                if a in CODE_NAMES:
                    positions.setdefault(fn.name, set()).add(i)
    found: dict[str, set[str]] = {}
    for path, tree in trees.items():
        literals: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                literals += [s for k in node.keywords if k.arg in CODE_NAMES
                             for s in _str(k.value)]
                for i in positions.get(_name(node.func) or "", ()):
                    if i < len(node.args):
                        literals += _str(node.args[i])
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                name = (_target(node) or "").lower()
                if name in CODE_NAMES:
                    literals += _str(node.value)
                if name.endswith(("reason", "code")) and isinstance(node.value, ast.Subscript):
                    literals += _str(node.value)  # an alias: DropReason = Literal[...]
                if isinstance(node, ast.AnnAssign) and name in CODE_NAMES:
                    literals += _str(node.annotation)
            elif isinstance(node, ast.arg) and node.arg in CODE_NAMES and node.annotation:
                literals += _str(node.annotation)
            elif isinstance(node, ast.Compare) and _name(node.left) == "code":  # e.code == "..."
                literals += [s for c in node.comparators for s in _str(c)]
            elif (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                  and RETURNS_CODE.search(ast.get_docstring(node) or "")):
                literals += [s for r in ast.walk(node) if isinstance(r, ast.Return)
                             for s in _str(r.value)]
        for s in literals:
            if CODE_RE.fullmatch(s):
                found.setdefault(s, set()).add(str(path.relative_to(ROOT)))
    return found


REJECT_CODES = scan_reject_codes()


def test_reject_code_scan_finds_the_codes() -> None:
    # The scan must see codes written in every way the code writes them; were it
    # to find nothing, every code would trivially be "documented".
    assert len(REJECT_CODES) >= 60, sorted(REJECT_CODES)
    for code in ("nonce_exhausted", "bad_key", "bad_reply",  # code="..." keywords
                 "bad_message", "bad_envelope",  # class attributes of error classes
                 "busy", "gateway_busy", "stale",  # reject(...) / drop(...) arguments
                 "duplicate", "handshake_timeout",  # link close("...", ...)
                 "bad_kind", "bad_author", "port_mismatch",  # _fail / _reject helpers
                 "too_old", "too_many_links"):  # returned by functions that pick a code
        assert code in REJECT_CODES, f"the reject code scan misses {code}"


@pytest.mark.parametrize("code", sorted(REJECT_CODES))
def test_every_reject_code_documented(code: str) -> None:
    body = re.search(r"^## 8\. Reject codes$(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert body, "docs/protocol.md has no '## 8. Reject codes'"
    assert f"`{code}`" in body.group(1), (
        f"reject code {code} (used in {', '.join(sorted(REJECT_CODES[code]))}) "
        "is not in docs/protocol.md section 8")


def test_signing_domains_documented() -> None:
    body = re.search(r"^## 6\. Signing domains$(.*?)(?=^## )", DOC, re.M | re.S)
    assert body, "docs/protocol.md has no '## 6. Signing domains'"
    listed = set(re.findall(r"^\| `([a-z-]+:)` \|", body.group(1), re.M))
    assert listed == {d.decode() for d in SIGNING_DOMAINS}


# -- CLI JSON output -----------------------------------------------------------------------

JSON_TYPES: dict[str, Callable[[object], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "[str]": lambda v: isinstance(v, list) and all(isinstance(e, str) for e in v),
}


def cli_table(command: str) -> dict[str, tuple[str, str]]:
    """Key -> (type, whole row) of the table under the heading naming ``tazcom COMMAND``."""
    cli_doc = re.search(r"^## 11\. CLI JSON output$(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert cli_doc, "docs/protocol.md has no '## 11. CLI JSON output'"
    m = re.search(rf"^### [^\n]*`tazcom {command}[ `].*?$(.*?)(?=^### |\Z)", cli_doc.group(1),
                  re.M | re.S)
    assert m, f"section 11 has no heading for tazcom {command}"
    rows = {k: (t, line) for line, k, t in
            re.findall(r"^(\| `([a-z_]+)` \| (\S+) .*)$", m.group(1), re.M)}
    assert rows, f"section 11: no table of keys for tazcom {command}"
    return rows


def _with(rec: Any, **changes: object) -> Any:
    return type(rec)(**{f.name: getattr(rec, f.name) for f in schema_fields(type(rec))}
                     | changes)


def cli_samples() -> dict[str, list[dict[str, Any]]]:
    """Rows of every command, from the CLI's own row functions, with and without their
    optional parts, as a script reads them (through JSON)."""
    me, peer = build(rpc.IdentityInfo), build(PeerInfo)
    bare = _with(peer, hops=None, alert=None, addresses=())
    entry = build(rpc.HistoryEntry)
    posted = build(rpc.PostResult)
    rows: dict[str, list[dict[str, Any]]] = {
        "id": [cli.id_row(me), cli.id_row(me, peer)],
        "peers": [cli.peer_row(peer), cli.peer_row(bare), cli.peer_row(peer, "0" * 60)],
        "status": [cli.status_row(build(events.ServiceHealth)),
                   cli.status_row(events.ServiceHealth(service="store", state="down", pid=None)),
                   cli.status_row(_with(build(events.ServiceHealth), service="gateway"),
                                  build(rpc.ClockInfo))],
        "trust": [cli.trust_row(peer, trusted=True), cli.trust_row(peer, trusted=False)],
        "say": [cli.post_row(posted, None, "hi")],
        "send": [cli.post_row(posted, peer, "hi")],
        "history": [cli.history_row(entry),
                    cli.history_row(_with(entry, to=None, text=None, status="", own=False,
                                          received=None))],
        "events": [cli.event_row(build(cls)) for cls in events.EVENTS.values()],
    }
    known, never_seen = Target(peer.key, peer.fingerprint, peer.nickname), Target.of("ab" * 32)
    for command in ("block", "mute"):
        rows[command] = [cli.policy_row(known, build(rpc.PolicyEntry)),
                         cli.policy_row(never_seen, _with(build(rpc.PolicyEntry), until=None)),
                         cli.policy_row(known, None)]
    static = build(rpc.StaticPeer)
    rows["connect"] = [cli.static_row(static),
                       cli.static_row(_with(static, key=None, nickname=None))]
    inv = invite.make(bytes(32), 4270, ["10.0.0.5:4270"], 1.8e9)
    rows["invite"] = [cli.invite_row(invite.encode(inv), inv, "alice")]
    rows["join"] = [cli.join_row("joined", inv, static, ""),
                    cli.join_row("waiting", inv, None, "connection refused")]
    file = build(events.FileStatus)
    rows["send-file"] = rows["share"] = rows["files"] = [
        cli.file_row(_with(file, sent=1_700_000_000_000)), cli.file_row(_with(file, to=None))]
    info = build(rpc.GroupInfo)
    member = build(rpc.GroupMember)
    info = _with(info, members=(member,))
    names = {member.key: "bob"}
    rows["group"] = rows["groups"] = [cli.group_row(info, names),
                                      cli.group_row(_with(info, invited_by=None))]
    keys = build(rpc.SigningKeys)
    rows["keys"] = rows["revoke"] = [cli.keys_row(keys),
                                     cli.keys_row(_with(keys, key=None, enc_key=None))]
    return {c: [json.loads(cli.json_line(r)) for r in rs] for c, rs in rows.items()}


def test_every_cli_command_has_a_json_row_function() -> None:
    assert set(cli.JSON_ROWS) == set(cli.COMMANDS)
    assert set(cli_samples()) == set(cli.JSON_ROWS)


@pytest.mark.parametrize("command", sorted(cli.JSON_ROWS))
def test_cli_json_rows_documented(command: str) -> None:
    doc = cli_table(command)
    rows = cli_samples()[command]
    if command == "events":  # the table lists the keys of every event; the rest: section 3
        for row in rows:
            extra = set(row) - set(doc)
            assert extra == set(names(events.EVENTS[row["topic"]])), row["topic"]
    else:
        printed = {k for row in rows for k in row}
        assert printed == set(doc), (f"tazcom {command} --json prints {sorted(printed)}; "
                                     f"docs/protocol.md section 11 lists {sorted(doc)}")
    for row in rows:
        for key, (typ, line) in doc.items():
            if key not in row:
                assert "only with" in line, f"tazcom {command}: {key} is not always printed"
                continue
            value, base = row[key], typ.rstrip("?")
            assert base in JSON_TYPES, f"tazcom {command}: {key}: unknown type {typ}"
            ok = typ.endswith("?") if value is None else JSON_TYPES[base](value)
            assert ok, f"tazcom {command} --json: {key} = {value!r}, documented as {typ}"


def test_cli_history_row_values() -> None:
    # what scripts rely on: seconds, "*" for the room, "received" for others' messages
    entry = _with(build(rpc.HistoryEntry), ts=1_700_000_123_456, to=None, status="")
    row = json.loads(cli.json_line(cli.history_row(entry)))
    assert row["ts"] == 1_700_000_123.456
    assert row["to"] == "*" and row["kind"] == "room" and row["status"] == "received"
    assert row["from"] == entry.origin.hex()


# -- every family: fields, types and limits ----------------------------------------------------
#
# For each record of each family the document names every field (its key on the wire) where
# the record is described, with its type and every bound of its Len and Range: a limit
# changed in common/limits.py without the document fails here.


def region(title: str) -> str:
    """The text under the heading ``title`` (any level) up to the next heading."""
    m = re.search(rf"^#+ {title}.*?$(.*?)(?=^#+ |\Z)", DOC, re.M | re.S)
    assert m, f"docs/protocol.md has no heading '{title}'"
    return m.group(1)


def paragraph(text: str, start: str) -> str:
    """The bullet or paragraph of ``text`` that begins with ``start``."""
    m = re.search(rf"^{re.escape(start)}.*?(?=^- |^\n|\Z)", text, re.M | re.S)
    assert m, f"docs/protocol.md has no paragraph starting {start!r}"
    return m.group(0)


def renderings(n: float) -> list[str]:
    """How the document may write bound ``n``: 65455, 65,455, 2^40, 2^63-1."""
    n = int(n)
    out = [str(n), f"{n:,}"]
    for k in range(8, 65):
        if n == 2**k:
            out.append(f"2^{k}")
        if n == 2**k - 1:
            out += [f"2^{k}-1", f"2^{k} - 1"]
    return out


def shows(line: str, n: float) -> bool:
    return any(re.search(rf"(?<![\d^])(?<!\d,){re.escape(r)}(?![\d^]|,\d)", line)
               for r in renderings(n))


def type_of(tp: Any) -> tuple[str, list[float], bool]:
    """The document's word for annotation ``tp``, its bounds, and whether nil is allowed."""
    import types
    import typing

    from tazcom.common.schema import INT64_MIN, UINT64_MAX, Len, Range, Record

    extra: list[Any] = []
    if typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        optional = True
        if typing.get_origin(tp) is typing.Annotated:
            tp, *more = typing.get_args(tp)
            extra += more
    bounds: list[float] = []
    for c in extra:
        if isinstance(c, Len):
            bounds += [b for b in (c.lo, c.hi) if b > 0]
        if isinstance(c, Range):
            bounds += [b for b in (c.lo, c.hi) if b not in (0, INT64_MIN, UINT64_MAX)]
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        word = "str" if isinstance(typing.get_args(tp)[0], str) else "int"
    elif origin in (tuple, list):
        word = "["
    elif origin is dict:
        word = "{"
    elif isinstance(tp, type) and issubclass(tp, Record):
        word = tp.__name__
    else:
        word = {str: "str", int: "int", float: "float", bool: "bool", bytes: "bytes"}[tp]
    return word, bounds, optional


def nested(tp: Any) -> list[type]:
    """Records inside annotation ``tp``."""
    import typing

    from tazcom.common.schema import Record

    if isinstance(tp, type) and issubclass(tp, Record):
        return [tp]
    return [r for a in typing.get_args(tp) for r in nested(a)]


def field_problems(cls: type, text: str, *, row: str | None = None, skip: frozenset = ENVELOPE,
                   names: bool = True, typed: bool = True,
                   scale: Callable[[Any, float], float] = lambda f, b: b) -> list[str]:
    """What ``text`` (or, for every field, the line ``row``) fails to say about ``cls``."""
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)
    problems = []
    for f in schema_fields(cls):
        if f.name in skip:
            continue
        word, bounds, _ = type_of(hints[f.name])
        if row is not None:
            line = row
        else:
            found = [ln for ln in text.splitlines() if ln.startswith(f"| `{f.key}` |")] or [
                ln for ln in text.splitlines() if f"`{f.key}`" in ln]
            if not found:
                problems.append(f"{cls.__name__}.{f.key}: not documented")
                continue
            line = found[0]
        if names and row is not None and not re.search(rf"\b{re.escape(f.key)}\b", line):
            problems.append(f"{cls.__name__}.{f.key}: not named in {line.strip()!r}")
        if typed and line.lstrip().startswith("|") and word not in line:
            problems.append(f"{cls.__name__}.{f.key}: type {word} not in {line.strip()!r}")
        for b in bounds:
            if not shows(line, scale(f, b)):
                problems.append(f"{cls.__name__}.{f.key}: limit {scale(f, b):g} not in "
                                f"{line.strip()!r}")
    return problems


def record_problems(cls: type, text: str, seen: set[type] | None = None) -> list[str]:
    """``field_problems`` of ``cls`` and of every record inside it: in its own ``Record X``
    section when the document has one, else in ``text``."""
    import typing

    seen = set() if seen is None else seen
    if cls in seen:
        return []
    seen.add(cls)
    problems = field_problems(cls, text)
    hints = typing.get_type_hints(cls, include_extras=True)
    for tp in (hints[f.name] for f in schema_fields(cls)):
        for inner in nested(tp):
            own = re.search(rf"^#+ Record {inner.__name__}\b", DOC, re.M)
            problems += record_problems(inner, region(f"Record {inner.__name__}") if own
                                        else text, seen)
    return problems


@pytest.mark.parametrize("topic", sorted(events.EVENTS))
def test_event_fields_types_and_limits(topic: str) -> None:
    assert record_problems(events.EVENTS[topic], region(f"`{re.escape(topic)}`")) == []


@pytest.mark.parametrize("op", sorted(rpc.REQUESTS))
def test_request_fields_types_and_limits(op: str) -> None:
    cls = rpc.REQUESTS[op]
    text = region(f"`{re.escape(op)}`")
    assert record_problems(cls, text) + record_problems(cls.REPLY, text) == []


def test_error_reply_documented() -> None:
    assert field_problems(rpc.ErrorReply, region(r"4\. Requests")) == []


@pytest.mark.parametrize("t", sorted(messages.MESSAGES))
def test_link_message_fields_types_and_limits(t: str) -> None:
    text = region("Link messages")
    rows = [ln for ln in text.splitlines() if ln.startswith(f"| `{t}` |")]
    assert rows, f"link message {t} has no row"
    assert field_problems(messages.MESSAGES[t], text, row=rows[0]) == []


def test_identity_proof_documented() -> None:
    assert field_problems(messages.IdentityProof, region("Handshake")) == []


@pytest.mark.parametrize("tag", sorted(routing.ROUTER_MESSAGES))
def test_router_message_fields_types_and_limits(tag: int) -> None:
    """A router message's row names its fields and states every limit, those of the
    arrays inside it included (``[hops, signed, sig]``)."""
    import typing

    cls = routing.ROUTER_MESSAGES[tag]
    rows = [ln for ln in region("Router messages").splitlines() if ln.startswith(f"| {tag} |")]
    assert rows, f"router message {tag} has no row"
    problems = field_problems(cls, "", row=rows[0], typed=False)
    for f in schema_fields(cls):
        for item in typing.get_args(typing.get_type_hints(cls, include_extras=True)[f.name]):
            for part in typing.get_args(item):  # tuple[tuple[A, B, C], ...] -> A, B, C
                for b in type_of(part)[1] if part is not Ellipsis else []:
                    if not shows(rows[0], b):
                        problems.append(f"{cls.__name__}.{f.name}: limit {b:g} not in row")
    assert problems == []


def test_envelope_and_bodies_documented() -> None:
    text = region("Envelopes")
    problems = field_problems(envelope.SignedFields, text)
    bodies = {envelope.RoomBody: "- **room**", envelope.DmInner: "- **dm**",
              envelope.ReceiptBody: "- **receipt**", envelope.ProfileBody: "- **profile**"}
    for cls, start in bodies.items():
        para = paragraph(text, start)
        positional = cls in (envelope.RoomBody, envelope.ReceiptBody)
        problems += field_problems(cls, para, row=" ".join(para.split()), names=not positional,
                                   typed=not positional)
    assert problems == []


def test_mdns_record_documented() -> None:
    # TXT values are text: bytes are written in hex, two digits a byte.
    def hex_digits(f: Any, b: float) -> float:
        return 2 * b if f.name in ("k", "s") else b

    assert field_problems(announce.TxtRecord, region(r"5\. The mDNS record"), typed=False,
                          scale=hex_digits) == []


def test_announce_json_documented() -> None:
    para = paragraph(region(r"1\. A node"), "**`announce.json`**")
    assert field_problems(announce.AnnounceFile, para, row=" ".join(para.split()),
                          typed=False) == []
