"""Private groups through the ``tazcom`` CLI, on two linked loopback nodes.

A creates ``team`` and invites B; B finds the invitation in ``group invites``, accepts it
and reads A's message in ``history --group team`` (``to`` = the group's id); both list
the group and its members; B cannot invite (``not_admin``), nobody can write to a group
that does not exist (``not_found``); A removes B, and B's ``groups`` says ``removed``.
"""

from __future__ import annotations

import os
from typing import Any

from tazcom.common import rpc
from tests.harness import Node, Timeout, linked_pair, request, wait_for

#: Seconds for something to cross the link (a control message, a message, a receipt).
DEADLINE = 30
#: Between two polls through the CLI (a process each).
POLL = 0.2
#: Nicknames of this run's own: other nodes on loopback (other tests) are seen too, and
#: one of them with the same nickname would be a key change for the other.
RUN = os.urandom(3).hex()
ANN, BEN = f"ann-{RUN}", f"ben-{RUN}"


def knows(node: Node, other: Node) -> None:
    """``node``'s router has ``other``'s profile (its DM key): it can seal to it."""

    def known() -> bool:
        try:
            mesh = request(node, "router", rpc.GetMesh(), timeout=2.0)
        except Timeout:
            return False
        return any(m.key == other.key for m in mesh.items)

    wait_for(known, DEADLINE, f"{node.nick} to have {other.nick}'s profile", interval=POLL)


def group(node: Node, gid: str) -> dict[str, Any] | None:
    """``node``'s row of the group ``gid`` in ``tazcom groups --json``."""
    return next((g for g in node.cli_json("groups") if g["group"] == gid), None)


def members(node: Node, ref: str) -> dict[str, dict[str, Any]]:
    """``tazcom group members REF --json``, by key."""
    return {m["key"]: m for m in node.cli_json("group", "members", ref)}


def history(node: Node, ref: str) -> list[dict[str, Any]]:
    return node.cli_json("history", "--group", ref)


def test_group_commands_across_two_nodes() -> None:
    with linked_pair(ANN, BEN) as (a, b):
        knows(a, b)
        knows(b, a)

        # -- create -------------------------------------------------------------------------
        [made] = a.cli_json("group", "create", "team")
        gid = made["group"]
        assert len(gid) == 64 and made["name"] == "team"
        assert made["role"] == "admin" and made["members"] == 1 and made["invited"] == 0
        listed = a.cli("groups").stdout
        assert "team" in listed and gid[:12] in listed and "admin" in listed

        # -- invite, invites, accept -------------------------------------------------------------
        [invited] = a.cli_json("group", "invite", "team", BEN)
        assert invited["group"] == gid and invited["invited"] == 1
        invites = wait_for(lambda: b.cli_json("group", "invites"), DEADLINE,
                           "B to see the invitation", interval=POLL)
        [inv] = invites
        assert inv["group"] == gid and inv["name"] == "team" and inv["role"] == "invited"
        assert inv["invited_by"] == a.key and inv["invited_by_nickname"] == ANN
        human = b.cli("group", "invites").stdout
        assert "team" in human and ANN in human
        assert a.cli_json("group", "invites") == []

        [joined] = b.cli_json("group", "accept", "team")
        assert joined["group"] == gid and joined["role"] == "member"
        assert b.cli_json("group", "invites") == []
        # A writes once it knows B accepted: its sender key then goes to B too
        wait_for(lambda: members(a, "team").get(b.key, {}).get("role") == "member", DEADLINE,
                 "A to see B as a member", interval=POLL)

        # -- say, history --group -----------------------------------------------------------
        [said] = a.cli_json("group", "say", "team", "hello team")
        assert said["to"] == gid and said["text"] == "hello team"
        assert said["status"] in ("queued", "sent", "relayed")
        human = a.cli("group", "say", gid[:8], "second").stdout
        assert human.startswith("to group team: ") and "(message " in human

        def arrived() -> dict[str, Any] | None:
            return next((r for r in history(b, "team") if r["text"] == "hello team"), None)

        row = wait_for(arrived, DEADLINE, "B to read 'hello team'", interval=POLL)
        assert row["to"] == gid and row["from"] == a.key and row["kind"] == "group"
        assert row["id"] == said["id"] and row["status"] == "received"
        assert f"{ANN}: hello team" in b.cli("history", "--group", "team").stdout
        # the room and the DMs stay as they were: no group message there
        assert all(r["text"] != "hello team" for r in b.cli_json("history"))
        assert all(r["text"] != "hello team" for r in b.cli_json("history", ANN))

        def delivered() -> dict[str, Any] | None:
            return next((r for r in history(a, gid[:6]) if r["id"] == said["id"]
                         and r["status"] == "delivered"), None)

        mine = wait_for(delivered, DEADLINE, "A's message to be delivered", interval=POLL)
        assert mine["reason"] == "1 of 1 members" and mine["to"] == gid
        assert "[delivered (1 of 1 members)]" in a.cli("history", "--group", "team").stdout

        # -- groups, members ------------------------------------------------------------------
        ga, gb = group(a, gid), group(b, gid)
        assert ga is not None and ga["role"] == "admin" and ga["members"] == 2
        assert gb is not None and gb["role"] == "member" and gb["members"] == 2
        for node in (a, b):
            seen = members(node, "team")
            assert set(seen) == {a.key, b.key}
            assert seen[a.key]["admin"] and not seen[b.key]["admin"]
            assert {m["role"] for m in seen.values()} == {"member"}
            assert all(m["group"] == gid for m in seen.values())
        human = a.cli("group", "members", "team").stdout
        assert ANN in human and BEN in human and "admin" in human

        # -- errors -------------------------------------------------------------------------------
        proc = b.cli("group", "invite", "team", ANN, check=False)
        assert proc.returncode == 1 and proc.stdout == ""
        assert "not_admin" in proc.stderr and "Traceback" not in proc.stderr
        for argv in (("group", "say", "nope", "x"), ("history", "--group", "nope"),
                     ("group", "members", "nope")):
            proc = a.cli(*argv, check=False)
            assert proc.returncode == 1, argv
            assert "not_found" in proc.stderr and "Traceback" not in proc.stderr, argv
        proc = a.cli("group", "accept", "team", check=False)
        assert proc.returncode == 1 and "not_invited" in proc.stderr

        # -- remove ------------------------------------------------------------------------------
        epoch = ga["epoch"]
        [after] = a.cli_json("group", "remove", "team", BEN)
        assert after["members"] == 1 and after["epoch"] > epoch
        assert set(members(a, "team")) == {a.key}
        wait_for(lambda: (g := group(b, gid)) is not None and g["role"] == "removed",
                 DEADLINE, "B to see that it was removed", interval=POLL)
        proc = b.cli("group", "say", "team", "still here?", check=False)
        assert proc.returncode == 1 and "not_member" in proc.stderr

        problems = a.tracebacks() + b.tracebacks()
        assert not problems, "\n".join(problems)
