"""``tazcom``: the command-line tool of a node.

Every subcommand acts on the node named by ``TAZCOM_HOME`` (or ``--home``),
prints for people by default and one JSON object per line with ``--json``.
Private groups: ``tazcom group ACTION ...`` (create, invite, invites, accept,
decline, say, leave, remove, members), ``tazcom groups``, ``tazcom history
--group NAME`` (docs/groups.md).
It is a client only: it asks the node's services over their request sockets
and reads the bus; it never reads the secret key.

Whatever a peer wrote (nicknames, texts, reasons, addresses) is printed through
``common.display.safe`` for people and ``json_escape`` in ``--json`` lines: a
stranger's escape sequences never reach the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from tazcom.common import rpc
from tazcom.common.config import Config
from tazcom.common.display import json_escape, safe
from tazcom.common.envelope import KIND_GROUP
from tazcom.common.errors import ConfigError, SchemaError, TazcomError
from tazcom.common.events import (
    Event,
    FileStatus,
    PeerInfo,
    ServiceHealth,
    event_as_json,
)
from tazcom.common.keys import fingerprint, safety_number
from tazcom.common.peers import PeerAmbiguous, PeerNotFound, Target, match_peer, resolve_target
from tazcom.common.schema import to_jsonable
from tazcom.services.busclient import BusClient, RpcClient
from tazcom.services.runtime import load_from_env

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
#: History shows the author's claimed time when it differs from arrival by more (ms).
CLAIM_SKEW_MS = 60_000
#: What the router's refusal of a post means for the person who typed it.
NOT_SENT = {"rate_limited": "not sent, too many messages", "blocked": "not sent"}
DONE = {"block": "blocked", "mute": "muted"}
#: What the router's refusal of ``files.send`` / ``files.get`` means, in a few words.
FILE_ERRORS = {
    "not_found": "no such file", "not_a_file": "not a regular file",
    "too_large": "too large", "no_key": "no DM key for the recipient yet (try again once "
    "it is seen on the mesh)", "bad_recipient": "cannot send a file to that key",
    "rate_limited": "not sent, too many messages", "blocked": "not sent",
    "io_error": "cannot read the file", "ambiguous": "several files match",
    "disk_full": "disk full",
}
#: What the router's terse refusals of ``group.*`` requests ("cannot invite") mean, in a
#: few words; the others (not_found, ambiguous, no_key...) say it in the router's words.
GROUP_ERRORS = {
    "not_admin": "only an admin of the group can do that",
    "not_member": "not a member of the group",
    "not_invited": "no invitation to that group waits here (tazcom group invites)",
    "already_member": "already a member of the group",
    "already_invited": "already invited: the invitation waits for an answer",
}
#: Seconds to wait for a ``group.*`` request that changes the group (one attempt: unlike
#: the other requests they are not safe to send twice, ``group.create`` least of all).
GROUP_TIMEOUT = 5.0
#: Seconds between ``files.list`` polls while the bus is silent (no welcome: it is down or
#: not reached), and while it is up (a safety net for a dropped event).
FILE_POLL = 0.2
FILE_POLL_BUS_UP = 2.0


class NodeNotRunning(TazcomError):
    code = "not_running"


class UserError(TazcomError):
    """What the user asked for cannot be done (unknown peer...); message says why."""

    code = "usage"


class Cli:
    def __init__(self, args: argparse.Namespace, config: Config) -> None:
        self.args = args
        self.config = config
        self.json = args.json
        self.ctx = zmq.asyncio.Context()
        self._clients: dict[str, RpcClient] = {}

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self.ctx.destroy(linger=0)

    def out(self, row: dict[str, Any]) -> None:
        print(json_line(row), flush=True)

    async def call(self, service: str, req: rpc.Request, timeout: float = 1.5,
                   retries: int = 1) -> Any:
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = RpcClient(self.ctx, self.config, service)
        try:
            return await client.call(req, timeout=timeout, retries=retries)
        except TazcomError as e:
            if e.code == "unavailable":
                raise NodeNotRunning(await self._silence(service, req, timeout,
                                                         retries + 1)) from None
            raise

    async def _silence(self, service: str, req: rpc.Request, timeout: float,
                       attempts: int = 2) -> str:
        """Why ``service`` did not answer: down, or up but busy (the bus says which)."""
        tries = f"{attempts} attempts" if attempts != 1 else "1 attempt"
        waited = f"{service} did not answer {req.OP} within {timeout:g} s ({tries})"
        state = None
        service = SERVED_BY.get(service, service)
        if service != "bus":
            client = RpcClient(self.ctx, self.config, "bus")
            with contextlib.suppress(TazcomError):
                report = await client.call(rpc.GetStatus(), timeout=0.5, retries=0)
                state = next((h.state for h in report.services if h.service == service), None)
            client.close()
        if state == "up":
            return f"{waited}: the node is running but {service} is busy; try again"
        if state is not None:
            return f"{waited}: {service} is {state} (tazcom status)"
        return (f"{waited}: the node at {self.config.paths.home} is not running, or its "
                f"{service} service is down (start it with: supervisord -c supervisord.conf)")

    # -- id -----------------------------------------------------------------------------

    async def cmd_id(self) -> int:
        info = await self.call("identity", rpc.GetIdentity())
        peer = await self.find_peer(self.args.peer) if self.args.peer else None
        out = id_row(info, peer)
        if self.json:
            self.out(out)
            return 0
        print(f"nickname     {safe(info.nickname)}")
        print(f"fingerprint  {info.fingerprint}")
        print(f"key          {info.key}")
        if peer is not None:
            print(f"safety number with {safe(peer.nickname)} ({peer.fingerprint}):")
            print(f"  {out['safety_number']}")
            print("  compare it aloud with theirs: `tazcom id YOUR-NICKNAME` on their node")
        return 0

    async def find_peer(self, query: str) -> PeerInfo:
        snap = await self.call("discovery", rpc.GetPeers())
        return _match(query, snap.peers)

    async def find_target(self, query: str, extra: Sequence[Target] = ()) -> Target:
        """``query`` in the peer table, else among the nodes the router knows through the
        mesh (and ``extra``), else a full 64-hex key of a node never seen."""
        snap = await self.call("discovery", rpc.GetPeers())
        found = {p.key: Target(p.key, p.fingerprint, p.nickname) for p in snap.peers}
        with contextlib.suppress(TazcomError):
            mesh = await self.call("router", rpc.GetMesh(), timeout=1.0)
            for m in mesh.items:
                found.setdefault(m.key, Target.of(m.key, m.nickname))
        for t in extra:
            found.setdefault(t.key, t)
        return _match(query, list(found.values()), resolve_target)

    async def nicknames(self) -> dict[str, str]:
        """Key -> nickname, from the peer table and the mesh (what answers in time)."""
        names: dict[str, str] = {}
        with contextlib.suppress(TazcomError):
            mesh = await self.call("router", rpc.GetMesh(), timeout=1.0)
            names.update((m.key, m.nickname) for m in mesh.items)
        with contextlib.suppress(TazcomError):
            snap = await self.call("discovery", rpc.GetPeers(), timeout=1.0)
            names.update((p.key, p.nickname) for p in snap.peers)
        return names

    async def scores(self) -> dict[str, rpc.ScoreEntry]:
        """The router's score of each key it scored; {} when it does not answer."""
        with contextlib.suppress(TazcomError):
            reply = await self.call("router", rpc.GetScores(), timeout=1.0)
            return {e.key: e for e in reply.items}
        return {}

    # -- peers ----------------------------------------------------------------------------

    async def cmd_peers(self) -> int:
        if self.args.peer:
            return await self.peer_detail(self.args.peer)
        snap = await self.call("discovery", rpc.GetPeers())
        peers: Sequence[PeerInfo] = snap.peers
        scores = await self.scores() if peers else {}
        if self.json:
            for p in peers:
                self.out(peer_row(p, score=scores.get(p.key)))
            return 0
        if not peers:
            print("no peers seen yet")
            return 0
        now = time.time()
        score = ("SCORE",) if scores else ()  # a column only when the router scores someone
        rows = [("NICKNAME", "FINGERPRINT", "STATE", "LAST SEEN", "ADDRESSES", *score)]
        for p in peers:
            state = p.state + (f" ({p.hops} hops)" if p.state == "mesh" and p.hops else "")
            if p.alert:
                state += " KEY CHANGED!"
            rows.append((p.nickname, p.fingerprint, state, _ago(now, p.last_seen, p.state),
                         ", ".join(p.addresses) or "-",
                         *((_score(scores.get(p.key), now),) if scores else ())))
        _table(rows)
        return 0

    async def peer_detail(self, query: str) -> int:
        peer = await self.find_peer(query)
        me = await self.call("identity", rpc.GetIdentity())
        number = safety_number(bytes.fromhex(me.key), bytes.fromhex(peer.key))
        score = (await self.scores()).get(peer.key)
        if self.json:
            self.out(peer_row(peer, number, score=score))
            return 0
        now = time.time()
        rows = [("nickname", peer.nickname), ("fingerprint", peer.fingerprint),
                ("key", peer.key), ("state", peer.state + (f" ({peer.hops} hops)"
                                                           if peer.hops else "")),
                ("since", _ago(now, peer.since, "offline") if peer.since else "-"),
                ("last seen", _ago(now, peer.last_seen, peer.state)),
                ("addresses", ", ".join(peer.addresses) or "-"),
                ("safety number", number)]
        if score is not None:
            rows.append(("score", _score(score, now)))
        if peer.alert:
            rows.append(("ALERT", peer.alert))
        for name, value in rows:
            print(f"{name:<14} {safe(value)}")
        return 0

    # -- trust ----------------------------------------------------------------------------

    async def cmd_trust(self) -> int:
        peer = await self.find_peer(self.args.peer)
        if self.args.remove:
            await self.call("gateway", rpc.Untrust(key=peer.key))
            verb = "removed every pin of"
        else:
            await self.call("gateway", rpc.Trust(key=peer.key, nickname=peer.nickname))
            verb = "trusted"
        if self.json:
            self.out(trust_row(peer, trusted=not self.args.remove))
        else:
            print(f"{verb} {safe(peer.nickname)} ({peer.fingerprint})")
        return 0

    # -- block and mute -----------------------------------------------------------------------

    async def cmd_block(self) -> int:
        return await self.policy("block")

    async def cmd_mute(self) -> int:
        return await self.policy("mute")

    async def policy(self, policy: str) -> int:
        """``block``/``mute`` PEER, ``--remove`` PEER, or ``--list``."""
        if self.args.list:
            return await self.list_policy(policy)
        target = await self.find_target(self.args.peer)
        table = await self.call("router", rpc.SetPolicy(key=target.key, policy=policy,
                                                        remove=self.args.remove))
        entry = next((e for e in table.items if e.key == target.key), None)
        if self.json:
            self.out(policy_row(target, entry))
        elif self.args.remove:
            print(f"un{DONE[policy]} {safe(target)}")
        elif policy == "block":
            print(f"blocked {safe(target)}: nothing it writes is shown, stored or relayed "
                  f"here, and its links are refused (undo: tazcom block --remove)")
        else:
            print(f"muted {safe(target)}: its messages are hidden here (still relayed for "
                  f"others) (undo: tazcom mute --remove)")
        return 0

    async def list_policy(self, policy: str) -> int:
        table = await self.call("router", rpc.GetPolicy())
        # a ban (the score's doing) refuses links like a block: listed with the blocks
        shown = ("block", "ban") if policy == "block" else (policy,)
        entries = [e for e in table.items if e.policy in shown]
        names = await self.nicknames() if entries else {}
        targets = [Target.of(e.key, names.get(e.key)) for e in entries]
        if self.json:
            for target, e in zip(targets, entries, strict=True):
                self.out(policy_row(target, e))
            return 0
        if not entries:
            print(f"nobody is {DONE[policy]} here")
            return 0
        rows = [("NICKNAME", "FINGERPRINT", "POLICY", "SINCE", "UNTIL", "REASON")]
        for target, e in zip(targets, entries, strict=True):
            rows.append((target.nickname or "?", target.fingerprint, e.policy, _when(e.since),
                         _when(e.until) if e.until else "-", e.reason or "-"))
        _table(rows)
        return 0

    # -- static peers -------------------------------------------------------------------------

    async def cmd_connect(self) -> int:
        if self.args.list:
            table = await self.call("gateway", rpc.GetStaticPeers())
        else:
            table = await self.call("gateway", rpc.Connect(address=self.args.address,
                                                           remove=self.args.remove))
        if self.json:
            for item in table.items:
                self.out(static_row(item))
            return 0
        if not self.args.list and not self.args.remove:
            added = {normalize_address(self.args.address)}
            item = next(i for i in table.items if i.address in added)
            print(f"static peer {item.address}: {item.state} (tazcom connect --list)")
            return 0
        if self.args.remove:
            print(f"removed {normalize_address(self.args.address)}")
        if not table.items:
            print("no static peers (tazcom connect HOST[:PORT] adds one)")
            return 0
        rows = [("ADDRESS", "STATE", "NICKNAME", "KEY", "FROM", "LAST ERROR")]
        for i in table.items:
            rows.append((i.address, i.state, safe(i.nickname or "-"),
                         i.key[:16] if i.key else "-", i.source, safe(i.error or "-")))
        _table(rows)
        return 0

    # -- invite codes -------------------------------------------------------------------------

    async def cmd_invite(self) -> int:
        from tazcom.common import invite

        ident = await self.call("identity", rpc.GetIdentity())
        info = await self.call("gateway", rpc.GetGatewayInfo())
        try:
            inv = invite.make(bytes.fromhex(ident.key), info.port, info.addresses,
                              time.time(), self.args.ttl)
        except ValueError as e:
            raise UserError(str(e)) from None
        code = invite.encode(inv)
        if self.json:
            self.out(invite_row(code, inv, ident.nickname))
            return 0
        print(f"Invite to {safe(ident.nickname)} ({ident.fingerprint}) at "
              f"{', '.join(inv.addresses)}, valid until {_utc(inv.expires)}:\n")
        print(f"  {code}\n")
        if sys.stdout.isatty() or self.args.qr:
            import segno

            segno.make(code, error="m").terminal(compact=True)
        print(f"\nOn the other node:  tazcom join {code}")
        print("Whoever has this code can link to this node until it expires; give it only "
              "to people you want in.")
        return 0

    async def cmd_join(self) -> int:
        from tazcom.common import invite

        try:
            inv = invite.decode(self.args.code, time.time())
        except invite.InviteError as e:
            raise UserError(f"invite code refused ({e.code}): {e}") from None
        table = await self.call("gateway", rpc.Join(key=inv.key.hex(),
                                                    addresses=inv.addresses))
        wanted = set(inv.addresses)
        if not self.json:
            print(f"joining {inv.fingerprint} at {', '.join(inv.addresses)} ...", flush=True)
        deadline = time.monotonic() + self.args.timeout
        mine: list[rpc.StaticPeer] = []
        while True:
            mine = [i for i in table.items if i.address in wanted]
            linked = next((i for i in mine if i.state == "linked"), None)
            wrong = next((i for i in mine if i.error.startswith("wrong_key")), None)
            if linked is not None or wrong is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)  # noqa: sleep-ok - polling the gateway under a deadline
            table = await self.call("gateway", rpc.GetStaticPeers())
        result = "joined" if linked else ("refused" if wrong else "waiting")
        if self.json:
            self.out(join_row(result, inv, linked or wrong,
                              wrong.error if wrong else "; ".join(
                                  sorted({i.error for i in mine if i.error}))))
        elif linked is not None:
            print(f"joined {safe(linked.nickname or '?')} ({inv.fingerprint}) at "
                  f"{linked.address}; its key is pinned")
        elif wrong is not None:
            print(f"refused: the node at {wrong.address} is not the one in the code "
                  f"({safe(wrong.error)}); nothing was linked", file=sys.stderr)
        else:
            errors = "; ".join(sorted({safe(i.error) for i in mine if i.error})) or "no answer"
            print(f"not linked within {self.args.timeout:g} s ({errors}); the node keeps "
                  "trying (tazcom connect --list)", file=sys.stderr)
        if wrong is not None:  # a stranger there: stop dialling it for this code
            for i in mine:
                with contextlib.suppress(TazcomError):
                    await self.call("gateway", rpc.Connect(address=i.address, remove=True))
        return 0 if linked else EXIT_ERROR

    # -- keys -------------------------------------------------------------------------------

    async def cmd_keys(self) -> int:
        return self.show_keys(await self.call("router", rpc.GetSigningKeys()))

    async def cmd_revoke(self) -> int:
        key = self.args.key
        if key is not None and not re.fullmatch(r"[0-9a-f]{64}", key):
            raise UserError("KEY is a delegated key, 64 lowercase hex digits "
                            "(tazcom keys shows the one in use)")
        at = int(self.args.at * 1000) if self.args.at is not None else None
        before = await self.call("router", rpc.GetSigningKeys())
        keys = await self.call("router", rpc.Revoke(key=key, at=at), timeout=10.0)
        if not self.json:
            print(f"revoked signing key {key or before.key}: every node refuses what it "
                  f"signed from {_when((at or time.time() * 1000) / 1000)} on")
        return self.show_keys(keys)

    def show_keys(self, keys: rpc.SigningKeys) -> int:
        if self.json:
            self.out(keys_row(keys))
            return 0
        _table([
            ("signing key", keys.key or "none certified (is identity running?)"),
            ("certified", f"{_when(keys.not_before)} .. {_when(keys.not_after)}"
             if keys.key else "-"),
            ("DM key", f"{keys.enc_key} since {_when(keys.enc_since)}"),
            ("older DM keys held", str(len(keys.old_enc_keys))),
            ("revoked", ", ".join(k[:16] for k in keys.revoked) or "-"),
        ])
        return 0

    # -- chat -------------------------------------------------------------------------------

    async def post(self, to: PeerInfo | None, text: str) -> int:
        client_id = os.urandom(16)
        req = rpc.Post(client_id=client_id, to=bytes.fromhex(to.key) if to else None, text=text)
        # The same client_id on every attempt: a retry can never post the message twice.
        try:
            reply = await self.call("router", req, timeout=5.0)
        except TazcomError as e:
            if e.code in NOT_SENT:  # refused by our own router: say so plainly
                raise TazcomError(f"{NOT_SENT[e.code]}: {e.message}", code=e.code) from None
            raise
        target = f"{to.nickname} ({to.fingerprint})" if to else "the room"
        if self.json:
            self.out(post_row(reply, to, text))
        else:
            print(f"to {safe(target)}: {reply.status} (message {reply.message_id.hex()[:12]})")
        return 0

    async def cmd_say(self) -> int:
        return await self.post(None, self.args.text)

    async def cmd_send(self) -> int:
        peer = await self.find_peer(self.args.peer)
        return await self.post(peer, self.args.text)

    async def cmd_history(self) -> int:
        group = await self.find_group(self.args.group) if self.args.group else None
        peer = await self.find_peer(self.args.peer) if self.args.peer else None
        conv = bytes.fromhex(group.group if group else peer.key) if group or peer else None
        reply = await self.call("store", rpc.StoreHistory(conv=conv, limit=self.args.limit))
        names: dict[str, str] = {}
        with contextlib.suppress(TazcomError):
            snap = await self.call("discovery", rpc.GetPeers(), timeout=1.0)
            names = {p.key: p.nickname for p in snap.peers}
        if group is not None:  # members known only through the mesh have a name there too
            for member in group.members:
                if member.nickname:
                    names.setdefault(member.key, member.nickname)
        with contextlib.suppress(TazcomError):
            me = await self.call("identity", rpc.GetIdentity(), timeout=1.0)
            names[me.key] = f"{me.nickname} (me)"
        for m in reply.messages:
            if self.json:
                self.out(history_row(m))
                continue
            origin = m.origin.hex()
            status = m.status or "received"
            arrived = m.ts if m.received is None else m.received
            claimed = (f"  (claimed {_when(m.ts / 1000)})"
                       if abs(m.ts - arrived) > CLAIM_SKEW_MS else "")
            who = names.get(origin, origin[:8])
            if group is not None:  # "delivered (2 of 3 members)"
                mark = f"  [{group_status_text(status, m.reason)}]" if m.own else ""
            else:
                mark = f"  [{status}{': ' + m.reason if m.reason else ''}]" if m.own else ""
            text = "(unreadable)" if m.text is None else m.text
            print(f"{_when(arrived / 1000)}  {safe(who)}: {safe(text)}{safe(mark)}{claimed}")
        if not reply.messages and not self.json:
            print("no messages yet")
        return 0

    # -- private groups -------------------------------------------------------------------

    async def group_call(self, req_type: type[rpc.Request], *, timeout: float = GROUP_TIMEOUT,
                         retries: int = 0, codes: dict[str, str] | None = None,
                         **fields: Any) -> Any:
        """A ``group.*`` request to the router: arguments the schema refuses are a usage
        error; a refusal comes back in plain words (``codes`` overrides ``GROUP_ERRORS``)."""
        try:
            req = req_type(**fields)
        except SchemaError as e:
            raise UserError(e.message) from None
        try:
            return await self.call("router", req, timeout=timeout, retries=retries)
        except TazcomError as e:
            if isinstance(e, NodeNotRunning):
                raise
            words = (codes or {}).get(e.code) or GROUP_ERRORS.get(e.code)
            if words:
                raise TazcomError(f"{words} ({e.message})", code=e.code) from None
            if e.code in NOT_SENT:  # refused by our own router: say so plainly
                raise TazcomError(f"{NOT_SENT[e.code]}: {e.message}", code=e.code) from None
            raise

    async def group_info(self, ref: str) -> rpc.GroupInfo:
        """The group the user named (``group.members``: its name or an id prefix)."""
        reply = await self.group_call(rpc.GroupMembers, timeout=1.5, retries=1, group=ref)
        return reply.info  # type: ignore[no-any-return]

    async def find_group(self, ref: str) -> rpc.GroupInfo:
        """``ref`` among ``group.list`` as the router resolves it: a unique name, else a
        unique prefix of an id (at least 4 hex digits). Errors: not_found, ambiguous."""
        table = await self.call("router", rpc.ListGroups())
        named = [g for g in table.groups if g.name == ref]
        low = ref.lower()
        by_id = [g for g in table.groups if len(low) >= 4 and g.group.startswith(low)]
        found = named or by_id
        if len(found) == 1:
            return found[0]  # type: ignore[no-any-return]
        if found:
            raise TazcomError(f"{len(found)} groups match {ref!r}: give more of the id "
                              "(tazcom groups)", code="ambiguous")
        raise TazcomError(f"no group {ref!r} here (tazcom groups)", code="not_found")

    async def cmd_group(self) -> int:
        if self.args.action is None:  # ``tazcom group``: as ``tazcom groups``
            return await self.cmd_groups()
        return await GROUP_ACTIONS[self.args.action](self)

    async def cmd_groups(self) -> int:
        table = await self.call("router", rpc.ListGroups())
        groups = sorted(table.groups, key=lambda g: (g.name.lower(), g.group))
        names = await self.nicknames() if any(g.invited_by for g in groups) else {}
        if self.json:
            for g in groups:
                self.out(group_row(g, names))
            return 0
        if not groups:
            print("no groups yet (tazcom group create NAME)")
            return 0
        rows = [("NAME", "ID", "ROLE", "MEMBERS", "EPOCH")]
        for g in groups:
            count = str(member_count(g)) + (f" (+{invited_count(g)} invited)"
                                            if invited_count(g) else "")
            rows.append((g.name, g.group[:12], g.role, count, str(g.epoch)))
        _table(rows)
        if any(g.role == "invited" for g in groups):
            print("invitations: tazcom group invites")
        return 0

    def group_done(self, info: rpc.GroupInfo, text: str) -> int:
        """A group after a change: its row (``--json``), or a line for people."""
        if self.json:
            self.out(group_row(info))
        else:
            print(text)
        return 0

    async def group_create(self) -> int:
        info = (await self.group_call(rpc.CreateGroup, name=self.args.name,
                                      client_id=os.urandom(16))).info
        name = shlex.quote(safe(info.name))
        return self.group_done(info, f"created group {safe(info.name)} (id {info.group[:12]});"
                                     f" invite with: tazcom group invite {name} PEER")

    async def group_invite(self) -> int:
        group = await self.group_info(self.args.name)
        target = await self.find_target(self.args.peer)
        info = (await self.group_call(rpc.InviteToGroup, group=group.group,
                                      peer=target.key)).info
        name = shlex.quote(safe(info.name))
        return self.group_done(info, f"invited {safe(target)} to {safe(info.name)}; it joins"
                                     f" once it accepts (tazcom group members {name})")

    async def group_invites(self) -> int:
        table = await self.call("router", rpc.ListGroups())
        invites = [g for g in table.groups if g.role == "invited"]
        names = await self.nicknames() if invites else {}
        if self.json:
            for g in invites:
                self.out(group_row(g, names))
            return 0
        if not invites:
            print("no invitations waiting")
            return 0
        rows = [("NAME", "ID", "INVITED BY", "MEMBERS")]
        for g in invites:
            rows.append((g.name, g.group[:12], inviter_text(g, names), str(member_count(g))))
        _table(rows)
        print("tazcom group accept NAME joins; tazcom group decline NAME refuses")
        return 0

    async def group_accept(self) -> int:
        info = (await self.group_call(rpc.AcceptGroup, group=self.args.name)).info
        n = member_count(info)
        name = shlex.quote(safe(info.name))
        return self.group_done(info, f"joined {safe(info.name)} ({n} member"
                                     f"{'s' if n != 1 else ''}); write with: "
                                     f"tazcom group say {name} TEXT")

    async def group_decline(self) -> int:
        info = (await self.group_call(rpc.DeclineGroup, group=self.args.name)).info
        return self.group_done(info, f"declined the invitation to {safe(info.name)}")

    async def group_leave(self) -> int:
        info = (await self.group_call(rpc.LeaveGroup, group=self.args.name)).info
        return self.group_done(info, f"left {safe(info.name)}; the others re-key and what "
                                     "follows is not readable here")

    async def group_remove(self) -> int:
        group = await self.group_info(self.args.name)
        # its members and invitees by the names the group knows them by, too
        known = [Target.of(m.key, m.nickname or None) for m in group.members]
        target = await self.find_target(self.args.peer, known)
        info = (await self.group_call(
            rpc.RemoveFromGroup, group=group.group, peer=target.key,
            codes={"not_member": "not a member of the group, nor invited"})).info
        return self.group_done(info, f"removed {safe(target)} from {safe(info.name)}; the "
                                     f"others re-key (epoch {info.epoch})")

    async def group_members(self) -> int:
        info = await self.group_info(self.args.name)
        me = None
        with contextlib.suppress(TazcomError):
            me = (await self.call("identity", rpc.GetIdentity(), timeout=1.0)).key
        if self.json:
            for m in info.members:
                self.out(group_member_row(info, m))
            return 0
        print(f"{safe(info.name)} (id {info.group[:12]}, epoch {info.epoch}): you are "
              f"{info.role}")
        rows = [("NICKNAME", "FINGERPRINT", "ROLE")]
        for m in info.members:
            nick = (m.nickname or "?") + (" (me)" if m.key == me else "")
            rows.append((nick, fingerprint(bytes.fromhex(m.key)), member_role(m)))
        _table(rows)
        return 0

    async def group_say(self) -> int:
        group = await self.group_info(self.args.name)
        # One attempt: a second group.say with the same client_id is answered with the
        # first message, but the router floods a second ciphertext of it all the same.
        reply = await self.group_call(rpc.GroupSay, client_id=os.urandom(16),
                                      group=group.group, text=self.args.text)
        if self.json:
            self.out(group_post_row(reply, group, self.args.text))
        else:
            print(f"to group {safe(group.name)}: "
                  f"{safe(group_status_text(reply.status, reply.reason))} "
                  f"(message {reply.message_id.hex()[:12]})")
        return 0

    # -- files ----------------------------------------------------------------------------

    async def cmd_send_file(self) -> int:
        return await self.send_file(await self.find_peer(self.args.peer))

    async def cmd_share(self) -> int:
        return await self.send_file(None)

    async def send_file(self, to: PeerInfo | None) -> int:
        # the router reads the file: a relative path would be taken from its own directory
        path = Path(self.args.path).expanduser().absolute()
        target = f"{to.nickname} ({to.fingerprint})" if to else "the room"
        try:
            req = rpc.SendFile(client_id=os.urandom(16), path=str(path),
                               to=bytes.fromhex(to.key) if to else None)
        except SchemaError as e:
            raise UserError(f"{safe(path)}: {e.message}") from None
        wait_room = bool(getattr(self.args, "wait", False))  # only share has --wait
        # Subscribed before the request: the first rows may be published before its reply.
        watch = None if self.args.no_wait else FileWatch(self)
        note = ""
        if watch is not None and sys.stdout.isatty() and not self.json:
            # the answer comes once the whole file is hashed: seconds for a big one
            note = f"{safe(path.name)}: hashing{' and encrypting' if to else ''}..."
            sys.stdout.write(note)
            sys.stdout.flush()
        # The same client_id on every attempt: a retry never sends the file twice.
        return await self.file_transfer(req, _send_timeout(path), watch, f"to {target}",
                                        lambda f: file_finished(f, wait_room=wait_room), note)

    async def cmd_files(self) -> int:
        if self.args.action == "get":
            return await self.get_file()
        table = await self.call("router", rpc.ListFiles(limit=self.args.limit))
        files: Sequence[FileStatus] = table.files
        if self.json:
            for f in files:
                self.out(file_row(f))
            return 0
        if not files:
            print("no files sent or received here yet (tazcom send-file PEER PATH, "
                  "tazcom share PATH)")
            return 0
        names = await self.nicknames()
        rows = [("ID", "NAME", "SIZE", "FROM", "TO", "HASH", "STATUS", "PATH")]
        for f in files:
            sender, receiver = file_parties(f, names)
            rows.append((f.id[:12], f.name, human_size(f.size), sender, receiver, f.hash[:12],
                         file_status_text(f), f.path or "-"))
        _table(rows)
        return 0

    async def get_file(self) -> int:
        prefix = self.args.id.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{4,64}", prefix):
            raise UserError(f"{self.args.id!r}: ID is 4 to 64 hex digits of a file's id or "
                            "hash (tazcom files lists them)")
        wait = self.args.wait
        if wait is None:  # people watch it arrive; scripts get the row at once
            wait = sys.stdout.isatty() and not self.json
        watch = FileWatch(self) if wait else None
        return await self.file_transfer(rpc.GetFile(file=prefix), 5.0, watch, "",
                                        lambda f: file_finished(f, wait_room=False))

    async def file_transfer(self, req: rpc.Request, timeout: float, watch: FileWatch | None,
                            what: str, finished: Callable[[FileStatus], bool],
                            note: str = "") -> int:
        """``files.send`` or ``files.get``, then (``watch``) its progress until ``finished``;
        ``note``: a line on the terminal while the router answers, wiped after."""
        try:
            try:
                row = await self.file_request(req, timeout=timeout)
            finally:
                if note:
                    sys.stdout.write("\r" + " " * len(note) + "\r")
            if watch is None:
                self.file_done(row, what)
                return 0
            row = await self.follow_file(watch, row, finished)
        finally:
            if watch is not None:
                await watch.close()
        return self.file_result(row, what, finished(row))

    async def file_request(self, req: rpc.Request, timeout: float) -> FileStatus:
        """``files.send`` or ``files.get``: the file's row, or the refusal in plain words."""
        try:
            reply = await self.call("router", req, timeout=timeout)
        except TazcomError as e:
            if e.code in FILE_ERRORS:
                raise TazcomError(f"{FILE_ERRORS[e.code]}: {e.message}", code=e.code) from None
            raise
        return file_of(reply)

    async def follow_file(self, watch: FileWatch, row: FileStatus,
                          finished: Callable[[FileStatus], bool]) -> FileStatus:
        """Show ``row`` as it changes, from the bus (or ``files.list`` while the bus is
        silent) until ``finished`` or ``--timeout``; the last row seen."""
        view = FileProgress(self)
        deadline = None if self.args.timeout is None else time.monotonic() + self.args.timeout
        polled = time.monotonic()
        view.show(row)
        try:
            while not finished(row):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                interval = FILE_POLL_BUS_UP if watch.live else FILE_POLL
                fresh = watch.take(row.id)
                if fresh is None and now - polled >= interval:
                    fresh = await self.poll_file(row.id)
                    polled = time.monotonic()
                if fresh is not None:
                    row = fresh
                    view.show(row)
                    continue
                view.tick()  # the rate and ETA move on when nothing is heard
                wait = interval - (now - polled)
                if deadline is not None:
                    wait = min(wait, deadline - now)
                await watch.wait(max(0.0, wait))
        finally:
            view.close()
        return row

    async def poll_file(self, file_id: str) -> FileStatus | None:
        # a router restarting fails a poll or two: the transfer resumes, and so do we
        with contextlib.suppress(TazcomError):
            table = await self.call("router", rpc.ListFiles(), timeout=1.0)
            return next((f for f in table.files if f.id == file_id), None)
        return None

    def file_done(self, row: FileStatus, target: str) -> None:
        """The row as the node answered it (``--no-wait``, ``files get --no-wait``)."""
        if self.json:
            self.out(file_row(row))
            return
        where = f"{target}: " if target else f"{safe(row.name)}: "
        print(f"{safe(where)}{file_status_text(row)} (file {row.id[:12]}, {safe(row.name)}, "
              f"{human_size(row.size)}); follow it with: tazcom files")

    def file_result(self, row: FileStatus, target: str, finished: bool) -> int:
        what = f"{row.name} {target}".strip()
        if row.status == "failed":
            raise TazcomError(f"{what}: {row.reason or 'failed'}", code="failed")
        if not finished:
            raise TazcomError(f"{what}: still {file_status_text(row)} after "
                              f"{self.args.timeout:g} s; the node goes on (tazcom files)",
                              code="timeout")
        if self.json:
            return 0  # every row was printed as it came
        if row.direction == "in":
            print(f"received {safe(row.name)} ({human_size(row.size)}): {safe(row.path)}")
        else:
            print(f"{safe(target)}: {row.status} (file {row.id[:12]}, {safe(row.name)}, "
                  f"{human_size(row.size)})")
        return 0

    # -- status ---------------------------------------------------------------------------

    async def cmd_status(self) -> int:
        try:
            report = await self.call("bus", rpc.GetStatus(), timeout=1.0)
            rows: list[ServiceHealth] = list(report.services)
            note = ""
        except NodeNotRunning:
            rows = await self._status_without_bus()
            note = "the bus is not answering: states come from pinging each service"
        clock = await self._clock() if any(r.service == "gateway" and r.state == "up"
                                           for r in rows) else None
        if self.json:
            for r in rows:
                self.out(status_row(r, clock if r.service == "gateway" else None))
            return 0
        now = time.time()
        table = [("SERVICE", "STATE", "PID", "SINCE", "DETAIL")]
        for r in rows:
            since = _ago(now, r.since, "offline") if r.since else "-"
            table.append((r.service, r.state, str(r.pid or "-"), since, r.detail or ""))
        _table(table)
        if clock is not None:
            print(clock_line(clock))
        if note:
            print(f"({note})")
        return 0

    async def _clock(self) -> rpc.ClockInfo | None:
        """The gateway's mesh clock, or None when it does not answer."""
        try:
            return await self.call("gateway", rpc.GetClock(), timeout=1.0)  # type: ignore[no-any-return]
        except TazcomError:  # NodeNotRunning included: no clock line
            return None

    async def _status_without_bus(self) -> list[ServiceHealth]:
        async def ping(service: str) -> ServiceHealth:
            client = RpcClient(self.ctx, self.config, service)
            try:
                pong = await client.call(rpc.Ping(), timeout=0.5, retries=0)
                return ServiceHealth(service=service, state="up", pid=pong.pid)
            except TazcomError:
                return ServiceHealth(service=service, state="down", pid=None)
            finally:
                client.close()

        return list(await asyncio.gather(*(ping(s) for s in self.config.services)))

    # -- events ---------------------------------------------------------------------------

    async def cmd_events(self) -> int:
        bus = BusClient(self.ctx, self.config, "cli", publish=False)
        bus.subscribe(self.args.topic or "")
        count = 0
        deadline = time.monotonic() + self.args.timeout if self.args.timeout else None
        try:
            while self.args.count is None or count < self.args.count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(bus.recv(), remaining)
                except TimeoutError:
                    break
                if ev is None:
                    if not self.json and not self.args.quiet:
                        print(f"# listening to {self.config.paths.home} "
                              f"(topic {self.args.topic or '*'})", file=sys.stderr, flush=True)
                    continue
                count += 1
                self._print_event(ev)
        finally:
            bus.close()
        return 0

    def _print_event(self, ev: Event) -> None:
        data = event_row(ev)
        if self.json:
            self.out(data)
            return
        millis = int(ev.ts * 1000) % 1000
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.ts)) + f".{millis:03d}"
        rest = {k: v for k, v in data.items() if k not in ("topic", "v", "src", "ts")}
        print(safe(f"{stamp} {ev.TOPIC:<20} [{ev.src}] {_compact(rest)}"), flush=True)


class FileWatch:
    """``file.status`` rows from the bus, the newest per file, read from before the request
    that starts a transfer until the command ends."""

    def __init__(self, cli: Cli) -> None:
        self.bus = BusClient(cli.ctx, cli.config, "cli", publish=False)
        self.bus.subscribe(FileStatus.TOPIC)
        self.rows: dict[str, FileStatus] = {}
        self._news = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    @property
    def live(self) -> bool:
        """The broker welcomed us: its events reach us (else polling is all we have)."""
        return self.bus.welcomed.is_set()

    async def _read(self) -> None:
        while True:
            ev = await self.bus.recv()
            if isinstance(ev, FileStatus):
                self.rows[ev.id] = ev
                self._news.set()

    def take(self, file_id: str) -> FileStatus | None:
        """The newest row of ``file_id`` heard since the last take, if any."""
        self._news.clear()
        return self.rows.pop(file_id, None)

    async def wait(self, timeout: float) -> None:
        """Until a row comes (of any file) or ``timeout`` seconds pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._news.wait(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.bus.close()


class FileProgress:
    """A transfer as it goes: a progress bar on a terminal, a JSON row per change with
    ``--json``, else a line per status (a log or a pipe)."""

    def __init__(self, cli: Cli) -> None:
        self.mode = "json" if cli.json else ("bar" if sys.stdout.isatty() else "lines")
        self.out = cli.out
        self.meter = RateMeter()
        self.row: FileStatus | None = None
        self.last: object = None
        self.drawn = 0

    def show(self, row: FileStatus) -> None:
        self.row = row
        self.meter.add(time.monotonic(), row.done)
        if self.mode == "json":
            data = file_row(row)
            if data != self.last:  # a poll that finds nothing new prints nothing
                self.out(data)
                self.last = data
        elif self.mode == "lines":
            text = f"{row.status}: {row.reason}" if row.reason else row.status
            if text != self.last:
                print(f"{safe(row.name)}: {safe(text)}", flush=True)
                self.last = text
        else:
            self.draw()

    def tick(self) -> None:
        if self.mode == "bar" and self.row is not None:
            self.draw()

    def draw(self) -> None:
        assert self.row is not None
        row = self.row
        line = progress_line(row.name, row.done, row.size, file_status_text(row, percent=False),
                             self.meter.rate(time.monotonic()),
                             shutil.get_terminal_size().columns - 1)
        # \r and padding, no cursor escapes: what a dumb terminal also gets right
        sys.stdout.write("\r" + line.ljust(self.drawn))
        sys.stdout.flush()
        self.drawn = len(line)

    def close(self) -> None:
        if self.mode == "bar" and self.drawn:
            sys.stdout.write("\n")
            sys.stdout.flush()


class RateMeter:
    """Bytes per second over the last ``window`` seconds: recent enough to follow a link
    that slows down, long enough not to jump with every chunk."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, done: int) -> None:
        if self.samples and done < self.samples[-1][1]:
            self.samples.clear()  # started again (a failed download retried): a new count
        self.samples.append((t, done))
        # keep one sample older than the window, so that the span covers all of it
        while len(self.samples) > 2 and self.samples[1][0] <= t - self.window:
            self.samples.popleft()

    def rate(self, now: float) -> float | None:
        """None until two samples span some time; a stalled transfer falls to 0."""
        if len(self.samples) < 2:
            return None
        start = now - self.window
        t0, d0 = self.samples[0]
        if t0 < start:
            t0, d0 = start, self._at(start)
        span = max(now, self.samples[-1][0]) - t0
        if span <= 0:
            return None
        return max(0.0, (self.samples[-1][1] - d0) / span)

    def _at(self, t: float) -> float:
        """Bytes done at ``t``, between the samples around it (linear)."""
        prev = self.samples[0]
        for ts, done in self.samples:
            if ts >= t:
                if ts <= prev[0]:
                    return float(done)
                return prev[1] + (done - prev[1]) * (t - prev[0]) / (ts - prev[0])
            prev = (ts, done)
        return float(prev[1])


# -- --json rows: one function per command (docs/protocol.md, "CLI JSON output") -----------


def json_line(row: dict[str, Any]) -> str:
    """One line of ``--json`` output: bytes become hex; strings exact, with every character
    a terminal would act on JSON-escaped (docs/protocol.md §11)."""
    return json_escape(json.dumps(to_jsonable(row), ensure_ascii=False))


def id_row(me: rpc.IdentityInfo, peer: PeerInfo | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"key": me.key, "fingerprint": me.fingerprint,
                           "nickname": me.nickname}
    if peer is not None:
        row["peer"] = peer.key
        row["peer_nickname"] = peer.nickname
        row["safety_number"] = safety_number(bytes.fromhex(me.key), bytes.fromhex(peer.key))
    return row


def peer_row(peer: PeerInfo, number: str | None = None, *,
             score: rpc.ScoreEntry | None = None) -> dict[str, Any]:
    """``peers``: one PeerInfo and the router's score of it; ``peers PEER`` adds the safety
    number."""
    row = peer.to_dict()
    row["score"] = score.score if score is not None else None
    if number is not None:
        row["safety_number"] = number
    return row


def status_row(health: ServiceHealth, clock: rpc.ClockInfo | None = None) -> dict[str, Any]:
    """A service's health; the gateway's row also says the mesh clock (when it answers)."""
    row = health.to_dict()
    if clock is not None:
        row |= {"clock_offset": clock.offset, "clock_neighbours": clock.neighbours,
                "clock_samples": clock.samples}
    return row


def clock_line(clock: rpc.ClockInfo) -> str:
    """``tazcom status``'s clock line (docs/protocol.md §9, "Clock offset")."""
    from tazcom.common.clock import describe

    if clock.offset:
        return (f"clock: {describe(clock.offset)} (median of {clock.neighbours} "
                f"neighbour{'s' if clock.neighbours != 1 else ''}); envelopes stamped with "
                f"mesh time")
    if not clock.samples:
        return "clock: no neighbour has said its time yet"
    return (f"clock: in step with the mesh ({clock.neighbours} of {clock.samples} "
            f"neighbour{'s' if clock.samples != 1 else ''} agree)")


def trust_row(peer: PeerInfo, *, trusted: bool) -> dict[str, Any]:
    return {"key": peer.key, "nickname": peer.nickname, "trusted": trusted}


def post_row(reply: rpc.PostResult, to: PeerInfo | None, text: str) -> dict[str, Any]:
    """``say`` and ``send``."""
    return {"id": reply.message_id.hex(), "to": to.key if to else "*",
            "status": reply.status, "text": text}


def history_row(m: rpc.HistoryEntry) -> dict[str, Any]:
    """``history``; a group's rows (``--group``) have ``to`` the group's id."""
    kind = "room" if m.to is None else "group" if m.kind == KIND_GROUP else "dm"
    return {"id": m.id.hex(), "from": m.origin.hex(), "to": m.to.hex() if m.to else "*",
            "text": m.text, "ts": m.ts / 1000, "status": m.status or "received",
            "reason": m.reason, "kind": kind,
            "received": None if m.received is None else m.received / 1000}


def group_row(info: rpc.GroupInfo, names: dict[str, str] | None = None) -> dict[str, Any]:
    """``groups`` and ``group invites`` (a row per group), and ``group create``, ``invite``,
    ``accept``, ``decline``, ``leave`` and ``remove`` (the group after the change)."""
    return {"group": info.group, "name": info.name, "role": info.role, "epoch": info.epoch,
            "members": member_count(info), "invited": invited_count(info),
            "invited_by": info.invited_by,
            "invited_by_nickname": inviter_name(info, names or {})}


def group_member_row(info: rpc.GroupInfo, m: rpc.GroupMember) -> dict[str, Any]:
    """``group members``: a row per member and per invitee."""
    return {"group": info.group, "key": m.key, "fingerprint": fingerprint(bytes.fromhex(m.key)),
            "nickname": m.nickname, "admin": m.admin, "role": m.role}


def group_post_row(reply: rpc.PostResult, info: rpc.GroupInfo, text: str) -> dict[str, Any]:
    """``group say``: as ``send``, ``to`` the group's id."""
    return {"id": reply.message_id.hex(), "to": info.group, "name": info.name,
            "status": reply.status, "reason": reply.reason, "text": text}


def member_count(info: rpc.GroupInfo) -> int:
    return sum(1 for m in info.members if m.role == "member")


def invited_count(info: rpc.GroupInfo) -> int:
    return sum(1 for m in info.members if m.role == "invited")


def member_role(m: rpc.GroupMember) -> str:
    """``admin``, ``member`` or ``invited``, for people."""
    return "admin" if m.admin and m.role == "member" else m.role


def inviter_name(info: rpc.GroupInfo, names: dict[str, str]) -> str | None:
    """The nickname of who invited us: as the group knows it, else as the mesh does."""
    if info.invited_by is None:
        return None
    known = next((m.nickname for m in info.members if m.key == info.invited_by), "")
    return known or names.get(info.invited_by) or None


def inviter_text(info: rpc.GroupInfo, names: dict[str, str]) -> str:
    if info.invited_by is None:
        return "-"
    fp = fingerprint(bytes.fromhex(info.invited_by))
    nick = inviter_name(info, names)
    return f"{nick} ({fp})" if nick else fp


def group_status_text(status: str, reason: str) -> str:
    """``delivered (2 of 3 members)``; ``failed: why``; else the status."""
    if not reason:
        return status
    if re.fullmatch(r"\d+ of \d+ members?", reason):
        return f"{status} ({reason})"
    return f"{status}: {reason}"


def policy_row(target: Target, entry: rpc.PolicyEntry | None) -> dict[str, Any]:
    """``block`` and ``mute``: one key and what this node does with it now (``entry`` None:
    nothing, after ``--remove``)."""
    return {"key": target.key, "fingerprint": target.fingerprint, "nickname": target.nickname,
            "policy": entry.policy if entry else None, "since": entry.since if entry else None,
            "until": entry.until if entry else None, "reason": entry.reason if entry else ""}


def event_row(ev: Event) -> dict[str, Any]:
    return event_as_json(ev)


#: The row function of every command that has ``--json`` output.
def static_row(item: rpc.StaticPeer) -> dict[str, Any]:
    return item.to_dict()


def invite_row(code: str, inv: Any, nickname: str) -> dict[str, Any]:
    return {"code": code, "key": inv.key.hex(), "fingerprint": inv.fingerprint,
            "nickname": nickname, "addresses": list(inv.addresses), "expires": inv.expires}


def join_row(result: str, inv: Any, item: rpc.StaticPeer | None, error: str
             ) -> dict[str, Any]:
    return {"result": result, "key": inv.key.hex(), "fingerprint": inv.fingerprint,
            "nickname": item.nickname if item is not None and result == "joined" else None,
            "address": item.address if item is not None else None, "error": error}


def normalize_address(text: str) -> str:
    from tazcom.common.staticpeers import normalize

    try:
        return normalize(text)
    except ValueError as e:
        raise UserError(str(e)) from None


def keys_row(keys: rpc.SigningKeys) -> dict[str, Any]:
    return keys.to_dict()


def file_row(f: FileStatus) -> dict[str, Any]:
    """``send-file``, ``share``, ``files`` and ``files get``: one file's row."""
    return {"id": f.id, "name": f.name, "size": f.size, "from": f.origin,
            "to": f.to if f.to is not None else "*", "hash": f.hash, "status": f.status,
            "done": f.done, "path": f.path, "direction": f.direction, "mime": f.mime,
            "reason": f.reason, "sent": f.sent / 1000 if f.sent else None}


def file_of(reply: Any) -> FileStatus:
    """The row in a ``files.send`` / ``files.get`` reply (wrapped in ``file``: a reply
    cannot have a field ``id`` of its own)."""
    return reply if isinstance(reply, FileStatus) else reply.file  # type: ignore[no-any-return]


def file_finished(f: FileStatus, *, wait_room: bool) -> bool:
    """Whether a command following ``f`` is done: a download once received; a DM file
    once delivered (the recipient's receipt says every chunk is stored there); a room file
    once sent (it has no one recipient), or with ``wait_room`` once every byte was fetched
    at least once. Failed ends them all."""
    if f.status == "failed":
        return True
    if f.direction == "in":
        return f.status == "received"
    if f.to is not None:
        return f.status == "delivered"
    if f.status == "queued":
        return False
    return f.done >= f.size if wait_room else True


def file_status_text(f: FileStatus, *, percent: bool = True) -> str:
    """``receiving 45%``, ``sent, 30% fetched``, ``failed: disk full``: a status for people,
    with how far it got while that moves (``percent`` False: the bar says it)."""
    if f.status == "failed":
        return f"failed: {f.reason}" if f.reason else "failed"
    pct = _percent(f.done, f.size)
    if not percent:
        return f.status
    if f.status == "receiving":
        return f"receiving {pct}%"
    if f.direction == "out" and f.status in ("sent", "relayed") and 0 < f.done < f.size:
        return f"{f.status}, {pct}% fetched"
    return f.status


def file_parties(f: FileStatus, names: dict[str, str]) -> tuple[str, str]:
    """(from, to) for people: nicknames where known, else fingerprints; "me"; "room"."""

    def who(key: str) -> str:
        return names.get(key) or fingerprint(bytes.fromhex(key))

    sender = "me" if f.direction == "out" else who(f.origin)
    if f.to is None:
        return sender, "room"
    return sender, "me" if f.direction == "in" else who(f.to)


def human_size(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``20.0 MiB``: binary units, as docs/files.md counts."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if round(n, 1) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} PiB"


def eta_text(seconds: float | None) -> str:
    """``0:07``, ``12:30``, ``1:02:03``; ``--:--`` while unknown (no rate yet, or stalled)."""
    if seconds is None or seconds != seconds or seconds > 99 * 3600:
        return "--:--"
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


#: Cells of the progress bar.
BAR = 20


def progress_line(name: str, done: int, size: int, status: str, rate: float | None,
                  width: int = 80) -> str:
    """``photo.jpg [#########-----------]  45%  1.2 MiB/2.6 MiB  850.0 KiB/s  ETA 0:02
    receiving``: the name is cut (``...``) so the line fits ``width``, the rest never."""
    frac = 1.0 if size <= 0 else min(1.0, done / size)
    filled = int(frac * BAR)
    speed = f"{human_size(rate)}/s" if rate is not None else "-"
    left = (size - done) / rate if rate else (0.0 if done >= size else None)
    tail = (f" [{'#' * filled}{'-' * (BAR - filled)}] {_percent(done, size):3d}%  "
            f"{human_size(done)}/{human_size(size)}  {speed}  ETA {eta_text(left)}  "
            f"{safe(status)}")
    shown = safe(name)
    room = max(8, width - len(tail))
    if len(shown) > room:
        shown = shown[:room - 3] + "..."
    return shown + tail


def _percent(done: int, size: int) -> int:
    # 100 only when it is all there: a long transfer at 99.7 % is not done
    if size <= 0 or done >= size:
        return 100
    return min(99, done * 100 // size)


def _send_timeout(path: Path) -> float:
    """Seconds to wait for ``files.send``: it answers once the file is hashed (a DM file
    encrypted too), so a big file needs time in proportion; 20 MB/s leaves room for a slow
    disk (hashing alone runs at hundreds)."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # the router says what is wrong with it
    return 10.0 + size / 20e6


JSON_ROWS: dict[str, Callable[..., dict[str, Any]]] = {
    "id": id_row, "peers": peer_row, "status": status_row, "trust": trust_row,
    "say": post_row, "send": post_row, "history": history_row, "events": event_row,
    "block": policy_row, "mute": policy_row, "keys": keys_row, "revoke": keys_row,
    "connect": static_row, "invite": invite_row, "join": join_row,
    "send-file": file_row, "share": file_row, "files": file_row,
    # ``group members`` prints group_member_row, ``group say`` group_post_row
    "group": group_row, "groups": group_row,
}


def _compact(d: dict[str, Any]) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, dict):
            v = "{" + _compact(v) + "}"
        elif isinstance(v, list):
            v = ",".join(map(str, v))
        parts.append(f"{k}={v}")
    return " ".join(parts)


def _match(query: str, peers: Sequence[Any], match: Callable[..., Any] = match_peer) -> Any:
    """``match`` (``match_peer``) with the user's error: who is known, or who matched."""
    try:
        return match(query, peers)
    except PeerNotFound:
        known = ", ".join(f"{p.nickname} ({p.fingerprint})" for p in peers) or "none"
        raise UserError(f"no peer matches {query!r}; known peers: {known}") from None
    except PeerAmbiguous as e:
        listed = "; ".join(f"{p.nickname} {p.fingerprint} {p.key[:16]}" for p in e.candidates)
        raise UserError(f"{query!r} matches several peers: {listed}; "
                        "give more of the fingerprint or the key") from None


#: Request sockets answered by another service than their name says.
SERVED_BY = {"store": "router"}  # the store service was merged into the router


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _score(entry: rpc.ScoreEntry | None, now: float) -> str:
    if entry is None:
        return "-"
    banned = entry.banned_until is not None and entry.banned_until > now
    return f"{entry.score:.1f}" + (f" (banned until {_when(entry.banned_until)})"
                                   if banned and entry.banned_until else "")


def _ago(now: float, then: float | None, state: str) -> str:
    if then is None:
        return "-"
    if state != "offline":
        return "now"
    secs = max(0, int(now - then))
    if secs < 60:
        return f"{secs}s ago"
    if secs < 3600:
        return f"{secs // 60}m ago"
    if secs < 86400:
        return f"{secs // 3600}h ago"
    return time.strftime("%Y-%m-%d", time.localtime(then))


def _table(rows: list[tuple[str, ...]]) -> None:
    rows = [tuple(safe(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 90s, 30m, 12h, 7d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _file_limit(text: str) -> int:
    n = int(text) if text.isdigit() else 0
    if not 1 <= n <= 10000:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of files, 1 to 10000")
    return n


def _global_options(default: Any) -> argparse.ArgumentParser:
    """The options every subcommand takes, before or after its name. After the name they
    must not reset what was given before it: argparse gives a subcommand's defaults the
    last word, so there they default to nothing at all (SUPPRESS)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=default, help="node home (default: $TAZCOM_HOME, "
                        "else ~/.local/share/tazcom)")
    common.add_argument("--json", action="store_true", default=default,
                        help="one JSON object per line")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tazcom", parents=[_global_options(None)],
                                     description="Tool of a TAZCOM chat-mesh node.")
    parser.set_defaults(json=False)
    common = _global_options(argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    idp = sub.add_parser("id", parents=[common],
                         help="this node's key, fingerprint and nickname")
    idp.add_argument("peer", nargs="?", help="also show the safety number with this peer")
    pp = sub.add_parser("peers", parents=[common], help="known peers and their state")
    pp.add_argument("peer", nargs="?", help="show one peer in detail, with the safety number")
    tp = sub.add_parser("trust", parents=[common],
                        help="accept a peer's key (clears a key-change alert)")
    tp.add_argument("peer", help="key, fingerprint (prefix) or nickname")
    tp.add_argument("--remove", action="store_true", help="remove the peer's pins instead")
    sub.add_parser("status", parents=[common], help="each service's health, as seen on the bus")
    sp = sub.add_parser("say", parents=[common], help="post to the public room")
    sp.add_argument("text")
    dp = sub.add_parser("send", parents=[common], help="send a direct message")
    dp.add_argument("peer", help="key, fingerprint (prefix) or nickname")
    dp.add_argument("text")
    hp = sub.add_parser("history", parents=[common],
                        help="the room, the DMs with PEER, or a private group (--group)")
    hp.add_argument("peer", nargs="?", help="key, fingerprint (prefix) or nickname")
    hp.add_argument("--group", metavar="NAME", default=None,
                    help="a private group's messages: its name or an id prefix (4+ hex digits)")
    hp.add_argument("--limit", type=int, default=100, help="newest N messages (default 100)")
    for name, what in (("block", "nothing PEER writes is shown, stored or relayed here, and "
                                 "its links are refused"),
                       ("mute", "hide PEER's messages here (still stored and relayed)")):
        pol = sub.add_parser(name, parents=[common], help=what,
                             description=f"tazcom {name} PEER: {what}. PEER is a nickname, a "
                             "fingerprint or key prefix, or a full key (also of a node "
                             "known only through the mesh, or never seen).")
        pol.add_argument("peer", nargs="?", help="key, fingerprint (prefix) or nickname")
        how = pol.add_mutually_exclusive_group()
        how.add_argument("--remove", action="store_true", help=f"un{name} PEER")
        how.add_argument("--list", action="store_true", help=f"every {name} of this node")
    cp = sub.add_parser("connect", parents=[common],
                        help="a static peer: dialled at HOST[:PORT] where mDNS finds nobody",
                        description="Add a static peer, dialled at HOST[:PORT] (default port "
                        "4270) until linked, and kept in the node home: for networks that "
                        "filter multicast, and for nodes at other sites (a VPN, a reachable "
                        "port).")
    cp.add_argument("address", nargs="?", help="HOST[:PORT]")
    how = cp.add_mutually_exclusive_group()
    how.add_argument("--list", action="store_true", help="every static peer and its state")
    how.add_argument("--remove", action="store_true", help="remove HOST[:PORT]")
    ip = sub.add_parser("invite", parents=[common],
                        help="print an invite code (and QR code) another node joins with",
                        description="Print a short code carrying this node's key, "
                        "addresses and port, and a QR code of it. `tazcom join CODE` on "
                        "another node links to this one and accepts only this key.")
    ip.add_argument("--ttl", type=_duration, default=24 * 3600,
                    help="how long the code is valid: 90s, 30m, 12h, 7d (default 24h)")
    ip.add_argument("--qr", action="store_true",
                    help="print the QR code even when the output is not a terminal")
    jp = sub.add_parser("join", parents=[common],
                        help="link to the node of an invite code, accepting only its key")
    jp.add_argument("code", help="the code `tazcom invite` printed")
    jp.add_argument("--timeout", type=float, default=15.0,
                    help="seconds to wait for the link (default 15; it keeps trying after)")
    sub.add_parser("keys", parents=[common],
                   help="the router's delegated signing key and DM keys (public halves)")
    rv = sub.add_parser("revoke", parents=[common],
                        help="revoke a delegated signing key; every node then refuses it",
                        description="Revoke a delegated signing key (default: the one in "
                        "use, replaced at once). Identity signs the revocation with the "
                        "long-term key and it floods the mesh.")
    rv.add_argument("key", nargs="?", help="the delegated key, hex (default: the one in use)")
    rv.add_argument("--at", type=float, default=None,
                    help="refuse what it signed from this unix time on (default: now); "
                    "give when it may have been stolen")
    sf = sub.add_parser("send-file", parents=[common],
                        help="send a file to a peer, end-to-end encrypted",
                        description="Send the file at PATH to PEER (end-to-end encrypted, "
                        "across the mesh). The node reads PATH, so it must be readable by "
                        "the node's user. On a terminal a progress bar follows it until "
                        "the peer's receipt says every byte is stored there (delivered).")
    sf.add_argument("peer", help="key, fingerprint (prefix) or nickname")
    sf.add_argument("path", help="the file to send")
    sh = sub.add_parser("share", parents=[common], help="offer a file to the room",
                        description="Offer the file at PATH to everyone on the mesh: its "
                        "manifest floods like a room message and peers fetch it with "
                        "`tazcom files get ID`. Returns once it is sent (it has no one "
                        "recipient to wait for), unless --wait.")
    sh.add_argument("path", help="the file to share")
    for parser_ in (sf, sh):
        how = parser_.add_mutually_exclusive_group()
        how.add_argument("--no-wait", action="store_true",
                         help="return once the node has taken the file (status queued)")
        if parser_ is sh:
            how.add_argument("--wait", action="store_true",
                             help="wait until every byte was fetched at least once")
        parser_.add_argument("--timeout", type=float, default=None,
                             help="stop waiting after S seconds (the node goes on sending)")
    fl = sub.add_parser("files", parents=[common],
                        help="files sent and received here; `files get ID` fetches one",
                        description="List the files sent and received here, newest first. "
                        "`tazcom files get ID` fetches a file this node was offered (a "
                        "room file, or a DM file over the auto-accept size).")
    fl.add_argument("--limit", type=_file_limit, default=1000,
                    help="newest N files (default 1000)")
    actions = fl.add_subparsers(dest="action", metavar="ACTION")
    fg = actions.add_parser("get", parents=[common], help="fetch an offered file",
                            description="Fetch a file this node was offered; ID is at "
                            "least 4 hex digits of its id or hash (tazcom files).")
    fg.add_argument("id", help="a prefix of the file's id or hash, from tazcom files")
    fg.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                    help="follow it until received (default: on a terminal)")
    fg.add_argument("--timeout", type=float, default=None,
                    help="stop waiting after S seconds (the download goes on)")
    add_group_parsers(sub, common)
    sub.add_parser("chat", parents=[common], help="the terminal chat app")
    ev = sub.add_parser("events", parents=[common], help="tail the node's event bus")
    ev.add_argument("--topic", default="", help="only topics starting with this prefix")
    ev.add_argument("--count", type=int, default=None, help="stop after N events")
    ev.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    ev.add_argument("--quiet", action="store_true", help="no banner on stderr")
    return parser


def add_group_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``tazcom group ACTION ...`` and ``tazcom groups``."""
    name_help = "the group's name, or 4+ hex digits of its id (tazcom groups)"
    gp = sub.add_parser("group", parents=[common], help="private groups: create, invite, "
                        "accept, say, members... (tazcom group -h)",
                        description="Private groups: end-to-end encrypted, readable by their "
                        "members only. NAME is a group's name or a unique prefix of its id "
                        "(at least 4 hex digits; tazcom groups lists them); PEER a nickname, "
                        "a fingerprint or key prefix, or a full key. Without ACTION: every "
                        "group, as tazcom groups.")
    actions = gp.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, what: str, *args: tuple[str, str]) -> argparse.ArgumentParser:
        ap = actions.add_parser(name, parents=[common], help=what, description=what + ".")
        for arg, arg_help in args:
            ap.add_argument(arg, metavar=arg.upper(), help=arg_help)
        return ap

    peer = ("peer", "key, fingerprint (prefix) or nickname")
    action("create", "create a group, with this node as its admin",
           ("name", "the group's name (up to 64 bytes)"))
    action("invite", "invite PEER (admins only); it joins once it accepts",
           ("name", name_help), peer)
    action("invites", "the invitations waiting here, and who sent them")
    action("accept", "accept an invitation (tazcom group invites)", ("name", name_help))
    action("decline", "decline an invitation", ("name", name_help))
    action("say", "write to a group (its members only can read it)", ("name", name_help),
           ("text", "the message"))
    action("leave", "leave a group; the others re-key", ("name", name_help))
    action("remove", "remove PEER (admins only); the others re-key and it cannot read "
           "what follows", ("name", name_help), peer)
    action("members", "a group's members and invitees", ("name", name_help))
    sub.add_parser("groups", parents=[common],
                   help="every private group here: name, id, our role, members, epoch")


COMMANDS: dict[str, Callable[[Cli], Coroutine[Any, Any, int]]] = {
    "id": Cli.cmd_id,
    "peers": Cli.cmd_peers,
    "status": Cli.cmd_status,
    "events": Cli.cmd_events,
    "trust": Cli.cmd_trust,
    "say": Cli.cmd_say,
    "send": Cli.cmd_send,
    "history": Cli.cmd_history,
    "block": Cli.cmd_block,
    "mute": Cli.cmd_mute,
    "keys": Cli.cmd_keys,
    "connect": Cli.cmd_connect,
    "invite": Cli.cmd_invite,
    "join": Cli.cmd_join,
    "revoke": Cli.cmd_revoke,
    "send-file": Cli.cmd_send_file,
    "share": Cli.cmd_share,
    "files": Cli.cmd_files,
    "group": Cli.cmd_group,
    "groups": Cli.cmd_groups,
}
#: ``tazcom group ACTION``.
GROUP_ACTIONS: dict[str, Callable[[Cli], Coroutine[Any, Any, int]]] = {
    "create": Cli.group_create, "invite": Cli.group_invite, "invites": Cli.group_invites,
    "accept": Cli.group_accept, "decline": Cli.group_decline, "say": Cli.group_say,
    "leave": Cli.group_leave, "remove": Cli.group_remove, "members": Cli.group_members,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "connect" and bool(args.list) == bool(args.address):
        parser.error("tazcom connect: give HOST[:PORT] (with or without --remove), "
                     "or --list alone")
    if args.command == "history" and args.peer and args.group:
        parser.error("tazcom history: give PEER or --group NAME, not both")
    if args.command in ("block", "mute") and bool(args.list) == bool(args.peer):
        parser.error(f"tazcom {args.command}: give PEER (with or without --remove), "
                     "or --list alone")
    env = dict(os.environ)
    if args.home:
        env["TAZCOM_HOME"] = str(Path(args.home).expanduser().absolute())
    try:
        config = load_from_env(env)
    except ConfigError as e:
        print(f"tazcom: configuration error: {e.message}", file=sys.stderr)
        return EXIT_ERROR
    if args.command == "chat":
        from tazcom.chat import run_chat

        return run_chat(config)
    cli = Cli(args, config)

    async def run() -> int:
        return await COMMANDS[args.command](cli)

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except NodeNotRunning as e:
        print(f"tazcom: {safe(e.message)}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except UserError as e:
        print(f"tazcom: {safe(e.message)}", file=sys.stderr)
        return EXIT_USAGE
    except TazcomError as e:
        print(f"tazcom: {safe(e.code)}: {safe(e.message)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        with contextlib.suppress(Exception):
            cli.close()


if __name__ == "__main__":
    sys.exit(main())
