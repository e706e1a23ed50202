"""Static peers' decisions (common/staticpeers.py): addresses, back-off, redial."""

from __future__ import annotations

import pytest

from tazcom.common.staticpeers import BACKOFF_MAX, DEFAULT_PORT, StaticPeers, normalize, split

KEY = bytes(range(32))


@pytest.mark.parametrize(("text", "want"), [
    ("10.0.0.5", f"10.0.0.5:{DEFAULT_PORT}"),
    (" 10.0.0.5:7000 ", "10.0.0.5:7000"),
    ("Node.Example.org:80", "node.example.org:80"),
    ("[fe80::1]:9", "[fe80::1]:9"),
    ("::1", f"[::1]:{DEFAULT_PORT}"),
])
def test_addresses_are_normalized(text: str, want: str) -> None:
    assert normalize(text) == want
    host, port = split(want)
    assert want.endswith(f":{port}") and host in want


@pytest.mark.parametrize("bad", ["", "10.0.0.5:0", "10.0.0.5:99999", "a b", "host:port",
                                 "[::1]x", "-bad-.org", "x" * 300])
def test_bad_addresses_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        normalize(bad)


def test_dial_back_off_and_come_back_at_once_after_a_link_that_worked() -> None:
    sp = StaticPeers()
    assert sp.add("10.0.0.5:4270") and not sp.add("10.0.0.5:4270")
    assert sp.due(0.0, set()) == ["10.0.0.5:4270"]
    assert sp.due(0.0, set()) == [], "one dial at a time"
    waits = []
    now = 0.0
    for _ in range(8):
        sp.failed("10.0.0.5:4270", now, "refused")
        waits.append(sp.next_deadline(set()) - now)
        now = sp.next_deadline(set())
        assert sp.due(now, set()) == ["10.0.0.5:4270"]
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and max(waits) == BACKOFF_MAX
    sp.verified("10.0.0.5:4270", 7, KEY, "bob")
    assert sp.state("10.0.0.5:4270", set()) == "linked"
    assert sp.due(now + 100, set()) == []
    sp.down("10.0.0.5:4270", now + 100, "timeout")
    assert sp.due(now + 100, set()) == ["10.0.0.5:4270"], "a link that worked: at once"


def test_a_link_to_the_same_key_that_came_another_way_counts() -> None:
    sp = StaticPeers()
    sp.add("10.0.0.5:4270")
    sp.due(0.0, set())
    sp.verified("10.0.0.5:4270", 1, KEY, "bob")
    sp.down("10.0.0.5:4270", 5.0, "duplicate")
    assert sp.due(5.0, {KEY}) == [] and sp.state("10.0.0.5:4270", {KEY}) == "linked"
    assert sp.next_deadline({KEY}) is None


def test_sources_and_removal() -> None:
    sp = StaticPeers()
    sp.set_source("config", ["10.0.0.1:4270"])
    sp.set_source("added", ["10.0.0.2:4270"])
    assert sp.added() == ["10.0.0.2:4270"]
    assert sp.remove("10.0.0.1:4270").source == "config"
    assert "10.0.0.1:4270" in sp.entries, "the configuration's stay"
    sp.remove("10.0.0.2:4270")
    assert sp.added() == []
    sp.set_source("config", [])
    assert not sp.entries
