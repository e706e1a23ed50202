"""docs/protocol.md documents every event, request, record and field that common/ defines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tazcom.common import events, rpc
from tazcom.common.schema import fields as schema_fields
from tazcom.common.version import PROTOCOL_VERSION

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
