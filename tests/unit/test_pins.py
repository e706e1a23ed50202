from __future__ import annotations

import pytest

from tazcom.common.events import PeerInfo
from tazcom.common.keys import fingerprint
from tazcom.common.peers import PeerAmbiguous, PeerNotFound, match_peer
from tazcom.common.pins import Pins

K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def test_first_use_pins_and_a_new_key_for_the_nickname_alerts() -> None:
    p = Pins()
    assert p.check("bob", K1) is None
    changed = p.check("bob", K2)
    assert changed is not None and changed.pinned == (K1,)
    assert fingerprint(K1) in changed.describe() and "tazcom trust" in changed.describe()
    p.trust(K2, "bob")
    assert p.check("bob", K2) is None
    assert p.check("bob", K1) is None  # two people called bob, both trusted


def test_trusted_key_may_change_nickname_and_pins_survive_dump() -> None:
    p = Pins()
    p.check("bob", K1)
    assert p.check("robert", K1) is None
    q = Pins()
    q.load(p.dump())
    assert q.check("bob", K3) is not None
    assert q.is_trusted(K1)
    assert q.forget(K1) and not q.forget(K1)
    assert q.check("bob", K3) is None  # the pin was removed: K3 is first use now


@pytest.mark.parametrize("junk", [None, [], {"version": 2}, {"version": 1, "trusted": ["zz"]}])
def test_bad_pin_files(junk: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        Pins().load(junk)


def peer(key: bytes, nick: str) -> PeerInfo:
    return PeerInfo(key=key.hex(), fingerprint=fingerprint(key), nickname=nick, addresses=(),
                    state="discovered", last_seen=1.0)


PEERS = [peer(K1, "bob"), peer(K2, "Bob"), peer(K3, "carol")]


def test_match_by_key_nickname_fingerprint() -> None:
    assert match_peer(K3.hex(), PEERS).nickname == "carol"
    assert match_peer("CAROL", PEERS).key == K3.hex()
    fp = fingerprint(K3)
    assert match_peer(fp, PEERS).key == K3.hex()
    assert match_peer(fp[:6], PEERS).key == K3.hex()
    assert match_peer(K3.hex()[:10], PEERS).key == K3.hex()


def test_ambiguous_and_unknown() -> None:
    with pytest.raises(PeerAmbiguous) as info:
        match_peer("bob", PEERS)
    assert {p.key for p in info.value.candidates} == {K1.hex(), K2.hex()}
    with pytest.raises(PeerNotFound):
        match_peer("dave", PEERS)
    with pytest.raises(PeerNotFound):
        match_peer("", PEERS)
