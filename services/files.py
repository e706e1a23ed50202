"""The file service: files sent, received and relayed, in the router process.

It lives with the router because it needs what the router owns: the routes (the next
hop toward a file's origin), the DM keys (a DM file's meta is sealed like a DM), the
envelope path (a manifest is posted, stored, relayed and caught up like a message) and
the receipts (``delivered`` means every chunk arrived). Its decisions are the cores':
``common.download`` (what to ask, from whom, what to keep), ``common.filerelay`` (what a
relay answers, merges and forwards), ``common.filecache`` (what a relay keeps),
``common.filetree`` (every chunk checked against the file id). This file executes them:
disk (``FileStore``, ``FileDB``), link messages through the gateway (``want`` and
``none`` as ordinary messages, ``chunk`` as bulk: docs/files.md, "Priorities on a link"),
and ``file.status`` events.

Threads: hashing a file to send it, building the leaves of a received one and decrypting
a DM file run in a worker thread; a chunk's check, write, read and encryption (tens of
microseconds for 48 KiB) run on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mimetypes
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nacl.utils

from tazcom.common import filecrypt, fileplan, filewire, rpc
from tazcom.common import routercore as core
from tazcom.common.download import Download
from tazcom.common.errors import RemoteProtocolError, RequestFailed
from tazcom.common.events import FileStatus
from tazcom.common.filecache import FileCache
from tazcom.common.fileplan import STALL
from tazcom.common.filerelay import Dropped, Relay, SendChunk, SendNone, SendWant, Serve, Store
from tazcom.common.filetree import (
    CHUNK,
    FILE_MAX,
    HASH,
    FileRef,
    HashTree,
    TreeBuilder,
    leaf_hash,
)
from tazcom.common.filewire import Chunk, NoneMsg, Want
from tazcom.common.keys import fingerprint

from .filedb import FileDB, FileRow
from .filestore import FileStore, FileStoreError
from .runtime import FatalError

if TYPE_CHECKING:
    from .router import Router

MiB = 1024 * 1024
#: ``file.status`` progress events per file at most this often (status changes at once).
PROGRESS_EVERY = 0.25
#: Final statuses: nothing more happens to these rows.
FINAL = ("delivered", "failed", "received")


@dataclass
class Settings:
    #: DM files up to this size (bytes, of the file) are fetched without asking.
    auto_accept: int = 25 * MiB
    #: Files over this size are refused (a manifest over the quota).
    max_size: int = 2048 * MiB
    #: What a relay keeps of the room files passing through.
    cache_quota: int = 256 * MiB

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> Settings:
        s = cls()
        for name in ("auto_accept", "max_size", "cache_quota"):
            if name in raw:
                value = raw[name]
                if type(value) is not int or value < 0:
                    raise ValueError(f"files.{name} must be a byte count, got {value!r}")
                setattr(s, name, value)
        return s


@dataclass
class Incoming:
    row: FileRow
    download: Download
    partial: Any  # filestore.Partial
    bad: int = 0
    good: int = 0
    finishing: bool = False
    #: When the last chunk was verified (or the download started), monotonic.
    progressed: float = field(default_factory=time.monotonic)


@dataclass
class Outgoing:
    row: FileRow
    tree: HashTree | None = None
    served: bytearray = field(default_factory=bytearray)
    served_count: int = 0
    #: The original, open while chunks are served from it.
    fd: int | None = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def stamp_of(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


@dataclass
class Complete:
    """A whole file this node can serve: a room file received, a finished cache copy."""

    path: Path
    size: int
    tree: HashTree


class FileService:
    def __init__(self, router: Router) -> None:
        self.router = router
        rt = router.rt
        self.log = rt.log
        try:
            self.settings = Settings.from_config(rt.config.raw.get("files", {}))
        except ValueError as e:
            raise FatalError(f"config: {e}") from None
        home = Path(rt.config.paths.home)
        self.store = FileStore(home)
        self.leaves_dir = self.store.files_dir / ".leaves"
        self.leaves_dir.mkdir(mode=0o700, exist_ok=True)
        self.db = FileDB(home / "files.sqlite")
        self.cache = FileCache(self.settings.cache_quota)
        self.relay = Relay()
        self.incoming: dict[bytes, Incoming] = {}
        self.outgoing: dict[bytes, Outgoing] = {}
        #: Our files' rows by manifest id (one file may be sent twice: one Outgoing).
        self.sent_rows: dict[bytes, FileRow] = {}
        self.complete: dict[bytes, Complete] = {}
        #: Cache copies being written: file id -> Partial.
        self.caching: dict[bytes, Any] = {}
        self.links: set[bytes] = set()
        self._told: dict[bytes, float] = {}
        self._wake = asyncio.Event()
        self.counts: dict[str, int] = {}
        #: Room files announced here (their manifests flood): the ones a relay caches. A DM
        #: file in transit is not kept: its one recipient gets every chunk anyway, and a
        #: copy here would serve nobody.
        self.room_files: set[bytes] = set()

    # -- start ---------------------------------------------------------------------------

    def load(self) -> None:
        for row in self.db.rows():
            if row.to is None:
                self.room_files.add(row.file_id)
            if row.direction == "out":
                # whatever its status: a room file outlives its ``sent`` (store expiry), and
                # serving checks the original anyway
                self.outgoing.setdefault(row.file_id, Outgoing(row))
                self.sent_rows[row.id] = row
            elif row.direction == "in" and row.status == "receiving":
                self.resume(row)
            elif row.direction == "in" and row.status == "received" and row.to is None:
                self.serve_complete(row.file_id, Path(row.path), row.size)
        for entry in self.store.entries("cache"):
            path = self.store.cache_dir / entry.file_id.hex()
            if entry.complete and path.exists():
                size = path.stat().st_size
                if self.serve_complete(entry.file_id, path, size):
                    self.cache.load(entry.file_id, size, time.time())
                    continue
            self.store.delete(entry.file_id)  # a partial cache copy: not worth resuming
        self.log.info("files: %d sent, %d receiving, %d served from disk; auto-accept %d "
                      "MiB, cache quota %d MiB", len(self.outgoing), len(self.incoming),
                      len(self.complete), self.settings.auto_accept // MiB,
                      self.settings.cache_quota // MiB)

    def serve_complete(self, file_id: bytes, path: Path, size: int) -> bool:
        leaves = self.read_leaves(file_id, size)
        if leaves is None:
            return False
        tree = HashTree.from_leaves(leaves, size)
        if tree.file_id != file_id:
            return False
        self.complete[file_id] = Complete(path, size, tree)
        self.store.add_complete(file_id, path, size)
        return True

    def read_leaves(self, file_id: bytes, size: int) -> bytes | None:
        try:
            leaves = (self.leaves_dir / file_id.hex()).read_bytes()
        except OSError:
            return None
        count = max(1, -(-size // CHUNK))
        return leaves if len(leaves) == count * HASH else None

    def write_leaves(self, file_id: bytes, leaves: bytes) -> None:
        tmp = self.leaves_dir / f"{file_id.hex()}.tmp"
        tmp.write_bytes(leaves)
        os.replace(tmp, self.leaves_dir / file_id.hex())

    # -- rows and events -----------------------------------------------------------------

    def changed(self, row: FileRow, *names: str, progress: bool = False) -> None:
        """Persist ``names`` of ``row`` and announce it (progress at most every
        PROGRESS_EVERY per file; anything else at once)."""
        now = time.monotonic()
        if progress and now - self._told.get(row.id, 0.0) < PROGRESS_EVERY:
            return
        self._told[row.id] = now
        if names:
            self.db.update(row, *names)
        self.router.rt.bus.emit(FileStatus, **row.event())

    def fail(self, row: FileRow, reason: str) -> None:
        row.status, row.reason = "failed", reason
        self.changed(row, "status", "reason", "done")
        self.log.warning("file %s (%s): failed: %s", row.name, row.id.hex()[:16], reason)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def rejected(self, link: bytes, code: str, detail: str, *, penalize: bool = False
                 ) -> None:
        self.count(code)
        self.router.rejected(core.Rejected(f"peer {fingerprint(link)}", code, detail))
        if penalize and self.router.core is not None:
            c = self.router.c
            c.penalize(link, time.monotonic(), invalid=True)
            self.router.run_now(c.judge(self.router.wall(), time.monotonic()))

    # -- links ---------------------------------------------------------------------------

    def set_links(self, links: set[bytes]) -> None:
        gone = self.links - links
        self.links = set(links)
        for key in gone:
            self.execute(self.relay.drop_neighbour(key))
            for inc in self.incoming.values():
                inc.download.drop_source(key)
        if links - gone:
            for inc in list(self.incoming.values()):
                self.pump(inc)

    def upstream(self, origin: bytes, exclude: bytes | None = None) -> bytes | None:
        """The next hop toward ``origin``: itself if linked, else the router's route."""
        if origin in self.links:
            return origin if origin != exclude else None
        if self.router.core is None:
            return None
        return next((k for k in self.router.c.first_hops.get(origin, ())
                     if k != exclude and k in self.links), None)

    def sources(self, row: FileRow) -> list[bytes]:
        """Whom a download asks, in order: toward the origin, whoever brought the
        manifest, then every other neighbour (each asks its own way toward the origin)."""
        return fileplan.sources(self.upstream(row.origin), row.came_from, self.links)

    # -- messages from neighbours --------------------------------------------------------

    def send(self, link: bytes, msg: filewire.FileMessage) -> None:
        self.router.send_file(link, filewire.encode(msg), bulk=isinstance(msg, Chunk))

    def on_frame(self, link: bytes, body: bytes) -> None:
        try:
            msg = filewire.decode(body)
        except RemoteProtocolError as e:
            # a type we do not know may be a newer node's: logged and dropped, not held
            # against the link
            self.rejected(link, e.code, f"file message: {e.message}",
                          penalize=e.code != "unknown_type")
            return
        if link not in self.links:
            return  # a link being closed: its last messages are dropped
        now = time.monotonic()
        if isinstance(msg, Want):
            self.on_want(link, msg, now)
        elif isinstance(msg, Chunk):
            self.on_chunk(link, msg, now)
        else:
            self.on_none(link, msg, now)
        self._wake.set()

    def on_want(self, link: bytes, want: Want, now: float) -> None:
        fid = want.file_id
        out = self.outgoing.get(fid)
        if out is not None:
            self.serve_own(link, out, want.indices)
            return
        whole = self.complete.get(fid)
        if whole is not None:
            self.serve(link, fid, want.indices)
            return
        ref = FileRef(fid, want.size) if want.size <= self.settings.max_size else None
        self.execute(self.relay.on_want(link, want, now, file=ref, has=lambda _i: False,
                                        upstream=self.upstream(want.origin, link)))

    def serve(self, link: bytes, fid: bytes, indices: tuple[int, ...]) -> None:
        """Chunks of a whole file here (received, or cached), each checked against its leaf
        first: the user may have edited a received file, and a bad chunk would cost us our
        neighbours' trust. A file that changed is no longer served."""
        whole = self.complete[fid]
        self.cache.touch(fid, time.time())
        missing = []
        for i in indices:
            data = None
            if i < whole.tree.count:
                data = self.store.read_chunk(fid, i)
            if data is not None and leaf_hash(i, data) != whole.tree.leaf(i):
                self.log.warning("%s changed since it was received: no longer served",
                                 whole.path)
                del self.complete[fid]
                self.send(link, NoneMsg(fid, indices))
                return
            if data is None:
                missing.append(i)
                continue
            self.send(link, Chunk(fid, i, data, tuple(whole.tree.proof(i))))
        if missing:
            self.send(link, NoneMsg(fid, tuple(missing)))

    def serve_own(self, link: bytes, out: Outgoing, indices: tuple[int, ...]) -> None:
        """Chunks of a file we sent, read from the original (for a DM file encrypted on
        the fly: the key and the index decide the bytes). A chunk that no longer matches
        its leaf (the original changed) is never sent: the transfer fails."""
        row = out.row
        if out.tree is None:
            leaves = self.read_leaves(row.file_id, row.size)
            if leaves is None:
                self.fail(row, "the hashes of the file are lost (files/.leaves)")
                self.outgoing.pop(row.file_id, None)
                self.send(link, NoneMsg(row.file_id, indices))
                return
            out.tree = HashTree.from_leaves(leaves, row.size)
            out.served = bytearray(out.tree.count)
        try:
            same = stamp_of(os.stat(row.path)) == row.stamp
        except OSError:
            same = False
        past = tuple(i for i in indices if i >= out.tree.count)
        if past:  # a want past the end: nothing of ours is wrong
            self.send(link, NoneMsg(row.file_id, past))
            indices = tuple(i for i in indices if i < out.tree.count)
        missing = []
        for i in indices:
            data = self.read_own(out, i)
            # the original as it was hashed, or else each chunk checked against its leaf
            if data is None or (not same and leaf_hash(i, data) != out.tree.leaf(i)):
                missing.append(i)
                continue
            self.send(link, Chunk(row.file_id, i, data, tuple(out.tree.proof(i))))
            if not out.served[i]:
                out.served[i] = 1
                out.served_count += 1
        if missing:
            self.send(link, NoneMsg(row.file_id, tuple(missing)))
            if row.status != "failed":
                self.fail(row, f"{row.path} changed or cannot be read since it was sent")
            out.close()
            return
        if row.status not in FINAL:
            row.done = min(row.plain, out.served_count * _plain_chunk(row))
            self.changed(row, "done", progress=True)

    def read_own(self, out: Outgoing, index: int) -> bytes | None:
        row = out.row
        step = _plain_chunk(row)
        try:
            if out.fd is None:
                out.fd = os.open(row.path, os.O_RDONLY | os.O_CLOEXEC)
            plain = os.pread(out.fd, step, index * step)
        except OSError:
            out.close()
            return None
        if row.key is None:
            return plain
        return filecrypt.encrypt_chunk(row.key, index, plain)

    def on_chunk(self, link: bytes, chunk: Chunk, now: float) -> None:
        fid = chunk.file_id
        inc = self.incoming.get(fid)
        leaf = None
        if inc is not None and not inc.finishing:
            verdict = inc.download.on_chunk(chunk.index, chunk.data, chunk.proof, link, now)
            if verdict.ok:
                leaf = verdict.leaf
                self.take(inc, chunk)
            elif verdict.reason == "bad_proof":
                inc.bad += 1
                self.rejected(link, "bad_proof", f"chunk {chunk.index} of "
                              f"{fid.hex()[:16]} fails its proof", penalize=True)
                if fileplan.gives_up(inc.bad, inc.good, 0.0) == "bad_manifest":
                    self.abandon(inc, f"bad_manifest: {inc.bad} chunks failed their proof "
                                 "and none passed (a size or id that lies)")
                    return
            elif not self.relay.expects(link, fid, chunk.index):
                self.rejected(link, verdict.reason or "unwanted", f"chunk {chunk.index} "
                              f"of {fid.hex()[:16]}: {verdict.reason}")
                return
            if inc is not None and fid in self.incoming:
                self.pump(inc)
        elif inc is not None and not self.relay.expects(link, fid, chunk.index):
            # finishing: every chunk is in, so this one is a copy (or past the end)
            reason = "duplicate" if inc.download.has(chunk.index) else "unwanted"
            self.rejected(link, reason, f"chunk {chunk.index} of {fid.hex()[:16]}: {reason}")
            return
        if self.relay.expects(link, fid, chunk.index) or inc is None:
            self.execute(self.relay.on_chunk(link, chunk, now, leaf=leaf))

    def on_none(self, link: bytes, msg: NoneMsg, now: float) -> None:
        inc = self.incoming.get(msg.file_id)
        if inc is not None:
            inc.download.on_none(link, msg.indices, now)
            self.pump(inc)
        self.execute(self.relay.on_none(link, msg, now))

    def execute(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, SendWant | SendNone | SendChunk):
                self.send(a.neighbour, a.msg)
            elif isinstance(a, Serve):
                if a.file_id in self.complete:
                    self.serve(a.neighbour, a.file_id, a.indices)
                else:
                    self.send(a.neighbour, NoneMsg(a.file_id, a.indices))
            elif isinstance(a, Store):
                self.cache_chunk(a.msg, a.size)
            elif isinstance(a, Dropped):
                # a relay checks with the size the want said: the upstream is to blame for a
                # bad proof only if a manifest here vouches for that size (a lying want must
                # not get an honest upstream banned)
                self.rejected(a.neighbour, a.reason, f"chunk {a.index} of "
                              f"{a.file_id.hex()[:16]}", penalize=a.reason == "bad_proof"
                              and self.vouched(a.file_id))

    def vouched(self, fid: bytes) -> bool:
        """A signed manifest accepted here says this file's size (not only a want)."""
        return fid in self.incoming or fid in self.outgoing or fid in self.room_files

    # -- the relay's cache ---------------------------------------------------------------

    def cache_chunk(self, chunk: Chunk, size: int) -> None:
        """A verified chunk passing through: kept while the quota admits the whole file;
        a cache copy is served once complete (its proofs come from its leaves then)."""
        fid = chunk.file_id
        if fid in self.complete or fid in self.incoming or fid not in self.room_files:
            return
        partial = self.caching.get(fid)
        if partial is not None and partial.size != size:
            return  # a want that lied about the size: its chunks fail their proofs anyway
        if partial is None:
            admitted = self.cache.admit(fid, size, time.time())
            for old in admitted.evict:
                self.drop_cached(old)
            if not admitted.ok:
                return
            try:
                partial = self.store.open_cache(fid, size)
            except FileStoreError as e:
                self.cache.remove(fid)
                self.log.warning("cache: %s", e.message)
                return
            self.cache.pin(fid)  # not evicted while it is written
            self.caching[fid] = partial
        try:
            partial.write_chunk(chunk.index, chunk.data)
            if partial.complete:
                del self.caching[fid]
                self.cache.unpin(fid)
                path = partial.finish()
                self.router.rt.spawn(self.index_cached(fid, path, partial.size),
                                     f"cache {fid.hex()[:16]}")
        except FileStoreError as e:
            self.caching.pop(fid, None)
            self.cache.remove(fid)
            with contextlib.suppress(FileStoreError):
                self.store.delete(fid)
            self.log.warning("cache: %s", e.message)

    async def index_cached(self, fid: bytes, path: Path, size: int) -> None:
        leaves = await asyncio.to_thread(_leaves_of, path, fid, size)
        if leaves is None:
            self.drop_cached(fid)
            return
        self.write_leaves(fid, leaves)
        self.serve_complete(fid, path, size)

    def drop_cached(self, fid: bytes) -> None:
        self.cache.remove(fid)
        partial = self.caching.pop(fid, None)
        if partial is not None:
            with contextlib.suppress(FileStoreError):
                partial.close()
        whole = self.complete.get(fid)
        if whole is not None and whole.path.parent == self.store.cache_dir:
            del self.complete[fid]
        with contextlib.suppress(FileStoreError, OSError):
            self.store.delete(fid)
            (self.leaves_dir / fid.hex()).unlink(missing_ok=True)

    # -- receiving -----------------------------------------------------------------------

    def on_manifest(self, a: core.FileManifest) -> None:
        """A manifest accepted by the router: a room file is offered, a DM file to us
        fetched at once up to ``auto_accept``."""
        env, m = a.env, a.manifest
        if self.db.rows("id = ?", (env.id,), 1):
            return
        secret = a.secret
        if secret is not None:
            name, mime, key = secret.name, secret.mime, secret.key
            plain = filecrypt.plain_size(m.size) or 0
        else:
            name, mime, key, plain = m.meta.name, m.meta.mime, None, m.size  # type: ignore[union-attr]
        if env.to is None:
            self.room_files.add(m.file_id)
        row = FileRow(id=env.id, file_id=m.file_id, name=name, size=m.size, plain=plain,
                      origin=env.origin, to=env.to, direction="in", status="offered",
                      sent=env.ts, created=time.time(), mime=mime, key=key,
                      came_from=a.came_from)
        self.db.put(row)
        self.log.info("file offered: %s (%d bytes) from %s%s", name, plain,
                      fingerprint(env.origin), "" if env.to is None else " (DM)")
        if env.to is not None and plain <= self.settings.auto_accept \
                and self.may_auto_accept(row):
            self.start(row)  # announced once, as receiving (or failed)
            return
        self.changed(row)
        if env.to is not None and plain <= self.settings.auto_accept:
            self.log.info("file %s from %s waits for `tazcom files get`: %s",
                              row.id.hex()[:16], fingerprint(env.origin),
                              "over the auto-accept budget (strangers must not fill the "
                              "disk with unasked files)")

    def may_auto_accept(self, row: FileRow) -> bool:
        """Unasked files take disk at once (preallocated): at most AUTO_PER_ORIGIN of them
        per origin, and AUTO_BUDGET times ``auto_accept`` bytes in all, being received at a
        time; the rest waits for ``files get`` (each origin is a key anyone can make)."""
        receiving = [(i.row.origin, i.row.size) for i in self.incoming.values() if i.row.auto]
        row.auto = fileplan.may_auto_accept(receiving, row.origin, row.size,
                                            self.settings.auto_accept)
        return row.auto

    def start(self, row: FileRow) -> None:
        if row.size > self.settings.max_size:
            self.fail(row, f"too_large: {row.plain} bytes, over files.max_size "
                           f"({self.settings.max_size})")
            return
        if row.file_id in self.incoming:
            return
        need = fileplan.space_needed(row.size, row.plain, row.key is not None)
        free = shutil.disk_usage(self.store.files_dir).free
        if free < need:
            self.fail(row, f"disk full: {need} bytes needed, {free} free")
            return
        row.status, row.reason = "receiving", ""
        self.db.update(row, "status", "reason")
        self.resume(row)

    def resume(self, row: FileRow) -> None:
        # a DM file's chunks are decrypted as they arrive (each is verified first): its
        # partial holds the plaintext, chunk i at i * PLAIN_CHUNK, so finishing is a rename
        size, step = (row.plain, filecrypt.PLAIN_CHUNK) if row.key is not None \
            else (row.size, CHUNK)
        try:
            partial = self.store.open_partial(row.file_id, size, step)
            download = Download(row.file_id, row.size, have=partial.have)
        except FileStoreError as e:
            self.fail(row, "disk full" if e.code == "disk_full" else e.message)
            return
        inc = self.incoming[row.file_id] = Incoming(row, download, partial)
        row.done = min(row.plain, download.progress)
        self.changed(row, "done")
        if download.done:
            self.finish(inc)
        else:
            self.pump(inc)

    def pump(self, inc: Incoming) -> None:
        for ask in inc.download.wants(time.monotonic(), self.sources(inc.row)):
            self.send(ask.source, Want(inc.row.file_id, inc.row.origin, inc.row.size,
                                       ask.indices))
        self._wake.set()

    def take(self, inc: Incoming, chunk: Chunk) -> None:
        key = inc.row.key
        try:
            data = chunk.data if key is None else \
                filecrypt.decrypt_chunk(key, chunk.index, chunk.data)
            inc.partial.write_chunk(chunk.index, data)
        except RemoteProtocolError as e:  # the tree vouched for it: the origin's key lies
            self.abandon(inc, f"{e.code}: {e.message}")
            return
        except FileStoreError as e:
            self.abandon(inc, "disk full" if e.code == "disk_full" else e.message)
            return
        inc.good += 1
        inc.progressed = time.monotonic()
        row = inc.row
        row.done = min(row.plain, inc.download.progress)
        if inc.download.done:
            self.finish(inc)
        else:
            self.changed(row, "done", progress=True)

    def abandon(self, inc: Incoming, reason: str) -> None:
        """Fail a download; its partial stays for ``files get`` to resume, unless it holds
        no verified chunk (a lie, a stall from the start): then its preallocated space is
        freed (only its own files: a cached copy of the same id is another file)."""
        self.incoming.pop(inc.row.file_id, None)
        with contextlib.suppress(FileStoreError):
            inc.partial.close()
        if not inc.download.verified:
            for path in (inc.partial.data_path, inc.partial.have_path):
                with contextlib.suppress(OSError):
                    path.unlink()
        self.fail(inc.row, reason)

    def finish(self, inc: Incoming) -> None:
        inc.finishing = True
        self.router.rt.spawn(self.finishing(inc), f"finish {inc.row.file_id.hex()[:16]}")

    async def finishing(self, inc: Incoming) -> None:
        row = inc.row
        try:
            if row.key is None:
                path = inc.partial.finish(row.name)
                leaves = await asyncio.to_thread(_leaves_of, path, row.file_id, row.size)
                if leaves is not None:
                    self.write_leaves(row.file_id, leaves)
                    self.serve_complete(row.file_id, path, row.size)
            else:  # already plaintext (``take``); never served: no leaves
                path = inc.partial.finish(row.name)
                self.store.forget_complete(row.file_id)
        except (FileStoreError, OSError) as e:
            message = getattr(e, "message", str(e))
            full = getattr(e, "code", "") == "disk_full" or \
                getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            self.abandon(inc, "disk full" if full else message)
            return
        self.incoming.pop(row.file_id, None)
        row.status, row.path, row.done, row.reason = "received", str(path), row.plain, ""
        self.changed(row, "status", "path", "done", "reason")
        self.log.info("file received: %s (%d bytes) -> %s", row.name, row.plain, path)
        if row.to is not None:
            await self.router.run(self.router.c.file_received(
                row.id, row.origin, self.router.wall(), time.monotonic()))

    # -- sending -------------------------------------------------------------------------

    async def send_file(self, req: rpc.SendFile) -> rpc.FileAnswer:
        path = Path(req.path)
        try:
            st = path.stat()
        except OSError as e:
            raise RequestFailed(f"{req.path}: {e.strerror}", code="not_found") from None
        if not path.is_file():
            raise RequestFailed(f"{req.path} is not a regular file", code="not_a_file")
        limit = filecrypt.PLAIN_MAX if req.to is not None else FILE_MAX
        limit = min(limit, self.settings.max_size)
        if st.st_size > limit:
            raise RequestFailed(f"{req.path}: {st.st_size} bytes, at most {limit}",
                                code="too_large")
        refused = self.router.c.refuse_post(req.to, "file", time.monotonic(), file=True)
        if refused is not None:
            raise RequestFailed(refused.message, code=refused.code)
        key = nacl.utils.random(filecrypt.KEY_BYTES) if req.to is not None else None
        try:
            size, fid, leaves = await asyncio.to_thread(_hash_file, path, key)
            after = path.stat()
        except OSError as e:
            raise RequestFailed(f"{req.path}: {e.strerror or e}", code="io_error") from None
        stamp = stamp_of(st) if stamp_of(after) == stamp_of(st) else ""
        self.write_leaves(fid, leaves)
        name = path.name or "file"
        mime = mimetypes.guess_type(name)[0] or ""
        mime = mime if len(mime) <= 64 else ""
        result = await self.router.post_spec(core.PostSpec(
            req.client_id, req.to, core.file_line(name, st.st_size),
            core.FilePost(fid, size, name, mime, key)))
        rows = self.db.rows("id = ?", (result.message_id,), 1)
        if rows:
            return rpc.FileAnswer(file=rows[0].status_record())
        held = self.router.c.own_status.get(result.message_id, ("delivered", None))[0]
        row = FileRow(id=result.message_id, file_id=fid, name=name, size=size,
                      plain=st.st_size, origin=self.router.c.own_key, to=req.to,
                      direction="out", status=result.status or held,
                      sent=int(self.router.wall() * 1000), created=time.time(), mime=mime,
                      path=str(path.resolve()), key=key, stamp=stamp)
        self.db.put(row)
        if req.to is None:
            self.room_files.add(fid)
        old = self.outgoing.get(fid)
        if old is not None:
            old.close()
        self.outgoing[fid] = Outgoing(row)
        self.sent_rows[row.id] = row
        self.changed(row)
        self.log.info("file sent: %s (%d bytes) to %s", name, st.st_size,
                      "the room" if req.to is None else fingerprint(req.to))
        return rpc.FileAnswer(file=row.status_record())

    def on_status(self, msg_id: str, st: str, reason: str) -> None:
        """One of our messages moved on (``chat.status``): a file's manifest, maybe."""
        row = self.sent_rows.get(bytes.fromhex(msg_id))
        if row is not None and row.status != st:
            row.status, row.reason = st, reason
            if st == "delivered":
                row.done = row.plain
            self.changed(row, "status", "reason", "done")

    # -- requests ------------------------------------------------------------------------

    def list_files(self, req: rpc.ListFiles) -> rpc.FileTable:
        live = {inc.row.id: inc.row for inc in self.incoming.values()}
        live |= self.sent_rows
        rows = [live.get(r.id, r) for r in self.db.rows(limit=req.limit)]
        counts = sorted(self.counts.items())[:64]
        return rpc.FileTable(files=tuple(r.status_record() for r in rows),
                             rejected=tuple(rpc.FileCount(code=c, count=n)
                                            for c, n in counts))

    def get_file(self, req: rpc.GetFile) -> rpc.FileAnswer:
        want = req.file
        found = [r for r in self.db.rows("direction = 'in'")
                 if r.id.hex().startswith(want) or r.file_id.hex().startswith(want)]
        if not found:
            raise RequestFailed(f"no file offered here matches {want}", code="not_found")
        if len({r.file_id for r in found}) > 1:
            raise RequestFailed(f"{want} matches {len(found)} files: give more digits",
                                code="ambiguous")
        row = found[0]
        inc = self.incoming.get(row.file_id)
        if inc is not None:
            return rpc.FileAnswer(file=inc.row.status_record())
        if row.status in ("offered", "failed"):
            self.start(row)
            if row.status == "failed":
                code = "disk_full" if row.reason.startswith("disk full") else \
                    "too_large" if row.reason.startswith("too_large") else "io_error"
                raise RequestFailed(row.reason, code=code)
        return rpc.FileAnswer(file=row.status_record())

    # -- time ----------------------------------------------------------------------------

    async def loop(self) -> None:
        """Wants that time out are asked elsewhere, relayed wants expire, bitmaps reach
        the disk when chunks stop coming."""
        while True:
            self._wake.clear()
            times = [d for d in (inc.download.next_deadline()
                                 for inc in self.incoming.values()) if d is not None]
            relay = self.relay.next_deadline()
            if relay is not None:
                times.append(relay)
            if self.incoming or self.caching:
                times.append(time.monotonic() + 1.0)  # bitmaps written, stalls found
            delay = max(0.0, min(times) - time.monotonic()) if times else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            now = time.monotonic()
            self.execute(self.relay.timer(now))
            for inc in list(self.incoming.values()):
                if inc.finishing:
                    continue
                if fileplan.gives_up(0, inc.good, now - inc.progressed) == "stalled":
                    self.count("stalled")
                    self.abandon(inc, f"stalled: no chunk for {STALL:.0f} s (no source has "
                                 "it now); `tazcom files get` tries again")
                    continue
                for _i, source in inc.download.timer(now):
                    self.count("want_timeout")
                    del source
                self.pump(inc)
                with contextlib.suppress(FileStoreError):
                    inc.partial.flush_if_due()
            for partial in list(self.caching.values()):
                with contextlib.suppress(FileStoreError):
                    partial.flush_if_due()

    def close(self) -> None:
        for out in self.outgoing.values():
            out.close()
        with contextlib.suppress(FileStoreError):
            self.store.close()
        self.db.close()


# -- worker-thread helpers --------------------------------------------------------------------


def _plain_chunk(row: FileRow) -> int:
    return filecrypt.PLAIN_CHUNK if row.key is not None else CHUNK




def _hash_file(path: Path, key: bytes | None) -> tuple[int, bytes, bytes]:
    """Size on the wire, file id and leaves of the file at ``path`` (encrypted with
    ``key`` for a DM file)."""
    builder = TreeBuilder()
    leaves = bytearray()
    step = filecrypt.PLAIN_CHUNK if key is not None else CHUNK
    with open(path, "rb") as f:
        index = 0
        while True:
            block = f.read(step)
            if not block and index:
                break
            data = filecrypt.encrypt_chunk(key, index, block) if key is not None else block
            if data or not index:
                leaves += builder.add(data)
            index += 1
            if len(block) < step:
                break
    built = builder.finish()
    return built.size, built.file_id, bytes(leaves)


def _leaves_of(path: Path, fid: bytes, size: int) -> bytes | None:
    """The leaves of a complete file on disk, if it is the file ``fid``."""
    builder = TreeBuilder()
    leaves = bytearray()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            leaves += builder.add(block)
            if len(block) < CHUNK:
                break
    built = builder.finish()
    if builder.count and not leaves:
        leaves += leaf_hash(0, b"")
    return bytes(leaves) if built.file_id == fid and built.size == size else None
