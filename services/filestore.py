"""The node's file storage under ``$TAZCOM_HOME/files/`` (docs/files.md, "Disk" and
"Transfer: Resume"). Plain, synchronous file I/O: no sockets, no asyncio, so it is tested
directly; the router owns one ``FileStore`` and is the only writer.

Layout
------
::

    files/                      received files, under safe_name(announced name)
    files/.partial/<id>.part    a download in progress: verified chunks in place
    files/.partial/<id>.have    its bitmap of verified chunks
    files/.cache/<id>.part      a relay's cached file in progress (same mechanism)
    files/.cache/<id>.have
    files/.cache/<id>           a complete cached file

``<id>`` is the file id in hex (64 characters). Nothing a peer says becomes a path except
through ``safe_name`` and ``unique_name`` (the final name of a download); ids are checked
to be 32 bytes and hex-encoded by us.

Writing a chunk
---------------
``open_partial`` (a download) and ``open_cache`` (a relay's copy) give a ``Partial``: the
data file is created at its full size and ``write_chunk(index, data)`` writes one
verified chunk at ``index * chunk_size`` (``os.pwrite``: chunks arrive in any order). The
file is **preallocated** (``posix_fallocate``) when it is created: a full disk is found at
the start of a transfer, not at 90 %, and later writes cannot run out of space. The cost is
the space of the chunks not yet received; ``preallocate=False`` makes sparse files instead
(then a write may fail with a full disk, which is handled the same way).

The bitmap and what a crash loses
----------------------------------
The bitmap (bit ``i`` is bit ``i % 8`` of byte ``i // 8``, as ``common.download``
expects) is kept in memory and written to ``<id>.have`` **atomically** (a temporary file,
then ``os.replace``) every ``flush_chunks`` chunks or ``flush_seconds`` seconds (checked
on each write, and by ``flush_if_due``), and on ``close`` and ``finish``. Before the
bitmap is written the data file is ``fdatasync``-ed, so a bitmap never claims a chunk
whose bytes are not on disk, even after a power cut. The trade-off: one sync and one small
file write per batch instead of per chunk (a 4 GiB file has 87,382 chunks), against
losing up to one batch of chunks on a crash: they are simply fetched again (each was
verified on arrival, and a rewrite of a chunk is harmless). A bitmap that cannot be read
back (a power cut before the rename reached the disk, a foreign file, another size) is
discarded: the download starts over, which is slow but never wrong.

Finishing
---------
``finish(name)`` syncs the data file and puts it into ``files/`` under
``unique_name(safe_name(name))`` **without ever overwriting**: ``os.link`` fails if the
name exists (the name may appear between the check and the link: then the next free name
is tried). File systems without hard links get an exclusive placeholder (``O_EXCL``)
that is then replaced. A failed finish leaves the partial file and its bitmap in place,
complete, for a retry.

A full disk
-----------
``ENOSPC`` or ``EDQUOT`` on any step (creating or preallocating, writing a chunk,
writing the bitmap, syncing, linking) raises ``FileStoreError("disk full: ...",
code="disk_full")``; other OS errors ``code="io_error"``. Nothing that existed is
truncated or overwritten: a new file is only created next to the old one and renamed over
our own files (the bitmap, the cache copy), and a data file we created in a failed
``open_*`` is removed again. The caller fails that transfer (``failed: disk full``);
everything else goes on.

Serving
-------
``read_chunk(file_id, index, chunk_size)`` reads from a complete cached file, a finished
download (known to this store from ``finish`` or ``add_complete``), or a partial one whose
bitmap has the chunk. It returns the bytes as stored; a finished file lives among the
user's files and may have been changed since, so a server checks what it sends against the
leaves it keeps (a receiver would refuse it anyway).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tazcom.common.errors import LocalProtocolError, TazcomError
from tazcom.common.filetree import CHUNK, FILE_MAX, HASH, chunk_count, chunk_length
from tazcom.common.safename import safe_name, split_ext, unique_name

log = logging.getLogger("tazcom.filestore")

#: Chunks written between two bitmap writes (3 MiB of 48 KiB chunks).
FLUSH_CHUNKS = 64
#: Seconds between two bitmap writes while chunks are coming.
FLUSH_SECONDS = 2.0
#: Header of a ``.have`` file: magic, size (u64), chunk size (u32); the bitmap follows.
HAVE_MAGIC = b"TZHAVE1\n"
_HAVE_HEADER = struct.Struct(">8sQI")
#: Names tried when a chosen name keeps appearing between the check and the link.
FINISH_TRIES = 100

Kind = Literal["download", "cache"]

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: errno values meaning "this file system cannot do that", not "it failed".
_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
_NO_LINK = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS,
                      errno.EMLINK, errno.EXDEV})
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class FileStoreError(TazcomError):
    """A file operation failed; ``code`` is ``disk_full``, ``io_error`` (the default:
    another OS error) or ``incomplete``. The transfer it belongs to fails; nothing else
    is affected."""

    code = "io_error"


def _failure(what: str, exc: OSError) -> FileStoreError:
    if exc.errno in _FULL:
        return FileStoreError(f"disk full: {what}: {exc.strerror}", code="disk_full")
    return FileStoreError(f"{what}: {exc}", code="io_error")


@contextlib.contextmanager
def _io(what: str) -> Iterator[None]:
    """Turn an ``OSError`` into the ``FileStoreError`` the caller reports."""
    try:
        yield
    except OSError as exc:
        raise _failure(what, exc) from exc


def _check_id(file_id: bytes) -> str:
    if not isinstance(file_id, bytes) or len(file_id) != HASH:
        raise LocalProtocolError(f"a file id is {HASH} bytes, not {file_id!r}")
    return file_id.hex()


def _bitmap_len(count: int) -> int:
    return (count + 7) >> 3


def _parse_have(raw: bytes, size: int, chunk_size: int) -> bytearray | None:
    """The bitmap in a ``.have`` file, or None if it is not one for this file."""
    count = chunk_count(size, chunk_size)
    n = _bitmap_len(count)
    if len(raw) != _HAVE_HEADER.size + n:
        return None
    magic, got_size, got_chunk = _HAVE_HEADER.unpack_from(raw)
    if magic != HAVE_MAGIC or got_size != size or got_chunk != chunk_size:
        return None
    bits = bytearray(raw[_HAVE_HEADER.size:])
    if count & 7 and bits[-1] >> (count & 7):
        return None
    return bits


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pread_exact(fd: int, length: int, offset: int) -> bytes | None:
    data = os.pread(fd, length, offset)
    return data if len(data) == length else None


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; a file system that cannot sync a directory
    is not an error (the rename is done, only its durability is the OS's)."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Entry:
    """A file in ``.partial`` or ``.cache``: its id, the bytes it takes on disk, and
    whether it is complete (only cache files are kept complete there)."""

    file_id: bytes
    used: int
    complete: bool


class Partial:
    """One file being written chunk by chunk: the open data file and its bitmap.

    Made by ``FileStore.open_partial`` or ``open_cache``, never directly. One handle per
    file and kind at a time (opening again gives the same one), so there is one bitmap.
    """

    def __init__(self, store: FileStore, kind: Kind, file_id: bytes, size: int,
                 chunk_size: int, data_path: Path, have_path: Path, fd: int,
                 have: bytearray) -> None:
        self._store = store
        self.kind: Kind = kind
        self.file_id = file_id
        self.size = size
        self.chunk_size = chunk_size
        self.count = chunk_count(size, chunk_size)
        self.data_path = data_path
        self.have_path = have_path
        self._fd: int | None = fd
        self._have = have
        self.verified = sum(bin(b).count("1") for b in have)
        #: Chunks set in memory since the bitmap was last written.
        self._dirty = 0
        self._flushed_at = store.clock()

    # -- state --------------------------------------------------------------------------

    @property
    def have(self) -> bytes:
        """The bitmap of chunks written (what ``Download(have=...)`` takes)."""
        return bytes(self._have)

    @property
    def complete(self) -> bool:
        return self.verified == self.count

    @property
    def closed(self) -> bool:
        return self._fd is None

    def has(self, index: int) -> bool:
        return 0 <= index < self.count and bool(self._have[index >> 3] >> (index & 7) & 1)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise LocalProtocolError(f"{self.data_path.name} is closed")
        return self._fd

    # -- writing ------------------------------------------------------------------------

    def write_chunk(self, index: int, data: bytes) -> bool:
        """Write chunk ``index`` (already verified against the file id) in place.

        False if it was already written: a chunk received twice is harmless (same bytes,
        by the hash). A chunk of the wrong length is a caller's bug (the proof fixes the
        length), refused with ``LocalProtocolError``. May write the bitmap (see the module
        docstring), so may raise ``FileStoreError`` for the data or the bitmap.
        """
        fd = self._open_fd()
        if not 0 <= index < self.count:
            raise LocalProtocolError(f"chunk {index} of a file of {self.count} chunks")
        if len(data) != chunk_length(self.size, index, self.chunk_size):
            raise LocalProtocolError(f"chunk {index} of {len(data)} bytes")
        if self.has(index):
            return False
        with _io(f"writing chunk {index} of {self.data_path.name}"):
            _write_all(fd, data, index * self.chunk_size)
        self._have[index >> 3] |= 1 << (index & 7)
        self.verified += 1
        self._dirty += 1
        self.flush_if_due()
        return True

    def flush_if_due(self) -> None:
        """Write the bitmap if ``flush_chunks`` chunks or ``flush_seconds`` have passed
        since the last time: the router's timer calls it when chunks stop coming."""
        if self._dirty and (self._dirty >= self._store.flush_chunks
                            or self._store.clock() - self._flushed_at
                            >= self._store.flush_seconds):
            self.flush()

    def flush(self) -> None:
        """Sync the data, then write the bitmap atomically."""
        fd = self._open_fd()
        if self._store.sync:
            with _io(f"syncing {self.data_path.name}"):
                os.fdatasync(fd)
        self._store._write_have(self.have_path, self.size, self.chunk_size, self._have)
        self._dirty = 0
        self._flushed_at = self._store.clock()

    # -- reading ------------------------------------------------------------------------

    def read_chunk(self, index: int) -> bytes | None:
        """Chunk ``index`` if it was written, else None."""
        if self._fd is None or not self.has(index):
            return None
        with _io(f"reading chunk {index} of {self.data_path.name}"):
            return _pread_exact(self._fd, chunk_length(self.size, index, self.chunk_size),
                                index * self.chunk_size)

    # -- the end ------------------------------------------------------------------------

    def finish(self, name: str | None = None) -> Path:
        """Put the complete file in place and close this handle; return its path.

        A download goes into ``files/`` under ``unique_name(safe_name(name))``, never over
        an existing file; a cache copy becomes ``.cache/<id>`` (``name`` is not used).
        Raises ``FileStoreError`` (``incomplete``, ``disk_full``, ``io_error``); then the
        handle stays open and the partial file and its bitmap stay in place.
        """
        fd = self._open_fd()
        if self.kind == "download" and name is None:
            raise LocalProtocolError("a download needs its announced name to finish")
        if not self.complete:
            raise FileStoreError(f"{self.data_path.name}: {self.count - self.verified} "
                                 f"of {self.count} chunks missing", code="incomplete")
        with _io(f"syncing {self.data_path.name}"):
            os.fsync(fd)
        if self.kind == "download":
            assert name is not None
            final = self._store._place(self.data_path, name, self.file_id)
        else:
            final = self._store._cache_path(self.file_id)
            with _io(f"renaming {self.data_path.name}"):
                os.replace(self.data_path, final)
            _fsync_dir(final.parent)
        self._store._forget(self)
        os.close(fd)
        self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self.have_path.unlink()
        if self.kind == "download":
            self._store._complete[self.file_id] = (final, self.size)
        return final

    def close(self) -> None:
        """Write the bitmap and close; the partial file stays for a later resume. If the
        bitmap cannot be written (disk full) the file is closed anyway, and the error
        raised: the chunks since the last bitmap are fetched again."""
        if self._fd is None:
            return
        try:
            if self._dirty:
                self.flush()
        finally:
            self._store._forget(self)
            os.close(self._fd)
            self._fd = None

    def _discard(self) -> None:
        """Close without writing anything (``FileStore.delete``)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Partial:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileStore:
    """Owns ``files/``, ``files/.partial/`` and ``files/.cache/`` under ``home``.

    ``clock`` (monotonic seconds) times the bitmap writes; ``sync=False`` skips the
    ``fdatasync`` before them (tests, or a node that accepts re-fetching after a power
    cut); ``preallocate=False`` makes sparse files.
    """

    def __init__(self, home: Path, *, flush_chunks: int = FLUSH_CHUNKS,
                 flush_seconds: float = FLUSH_SECONDS,
                 clock: Callable[[], float] = time.monotonic, sync: bool = True,
                 preallocate: bool = True) -> None:
        self.files_dir = Path(home) / "files"
        self.partial_dir = self.files_dir / ".partial"
        self.cache_dir = self.files_dir / ".cache"
        self.flush_chunks = max(1, flush_chunks)
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.sync = sync
        self.preallocate = preallocate
        for d in (self.files_dir, self.partial_dir, self.cache_dir):
            with _io(f"creating {d}"):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._open: dict[tuple[Kind, bytes], Partial] = {}
        #: file id -> (path, size) of complete files outside ``.cache``.
        self._complete: dict[bytes, tuple[Path, int]] = {}

    # -- paths --------------------------------------------------------------------------

    def _dir(self, kind: Kind) -> Path:
        return self.partial_dir if kind == "download" else self.cache_dir

    def _cache_path(self, file_id: bytes) -> Path:
        return self.cache_dir / _check_id(file_id)

    # -- opening ------------------------------------------------------------------------

    def open_partial(self, file_id: bytes, size: int, chunk_size: int = CHUNK) -> Partial:
        """The download of ``file_id`` (``size`` bytes), resumed from its bitmap if a
        previous run left one, else new. Raises ``FileStoreError`` (``disk_full`` if the
        file cannot be created or preallocated)."""
        return self._open_kind("download", file_id, size, chunk_size)

    def open_cache(self, file_id: bytes, size: int, chunk_size: int = CHUNK) -> Partial:
        """A relay's cached copy of ``file_id``, written like a download; ``finish()``
        makes it ``.cache/<id>``."""
        return self._open_kind("cache", file_id, size, chunk_size)

    def _open_kind(self, kind: Kind, file_id: bytes, size: int, chunk_size: int) -> Partial:
        hexid = _check_id(file_id)
        count = chunk_count(size, chunk_size)  # ValueError for a negative size
        handle = self._open.get((kind, file_id))
        if handle is not None:
            if (handle.size, handle.chunk_size) != (size, chunk_size):
                raise LocalProtocolError(f"{hexid} is open with another size")
            return handle
        data_path = self._dir(kind) / f"{hexid}.part"
        have_path = self._dir(kind) / f"{hexid}.have"
        flags = os.O_RDWR | _O_NOFOLLOW | _O_CLOEXEC
        created = False
        with _io(f"creating {data_path.name}"):
            try:
                fd = os.open(data_path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(data_path, flags)
        try:
            have = None if created else self._read_have(have_path, size, chunk_size)
            if have is None:
                have = bytearray(_bitmap_len(count))
                if not created:
                    log.info("%s: no usable bitmap, starting over", data_path.name)
            self._allocate(fd, size, data_path.name)
        except BaseException:
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    data_path.unlink()
            raise
        handle = Partial(self, kind, file_id, size, chunk_size, data_path, have_path, fd, have)
        self._open[(kind, file_id)] = handle
        return handle

    def _allocate(self, fd: int, size: int, name: str) -> None:
        """Give the data file its full size: reserved blocks if ``preallocate`` and the
        file system can, else a sparse file. Never shrinks below ``size``; a longer file
        (ours, from an older run that went wrong) is cut to ``size``."""
        with _io(f"allocating {size} bytes for {name}"):
            if os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)
            if self.preallocate and size > 0:
                try:
                    os.posix_fallocate(fd, 0, size)
                    return
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)

    # -- bitmaps ------------------------------------------------------------------------

    @staticmethod
    def _read_raw(path: Path, limit: int) -> bytes | None:
        """At most ``limit`` bytes of a file of ours, or None (missing, a symlink)."""
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
        except OSError:
            return None
        try:
            return os.read(fd, limit)
        except OSError:
            return None
        finally:
            os.close(fd)

    @classmethod
    def _read_have(cls, path: Path, size: int, chunk_size: int) -> bytearray | None:
        limit = _HAVE_HEADER.size + _bitmap_len(chunk_count(size, chunk_size)) + 1
        raw = cls._read_raw(path, limit)
        return None if raw is None else _parse_have(raw, size, chunk_size)

    def _write_have(self, path: Path, size: int, chunk_size: int, bits: bytearray) -> None:
        """Write the bitmap next to ``path`` and rename it over: the old bitmap stays
        whole until the new one is complete. A temporary file left by a failure is
        removed (it is ours; a later attempt would truncate it anyway)."""
        tmp = path.with_name(path.name + ".tmp")
        raw = _HAVE_HEADER.pack(HAVE_MAGIC, size, chunk_size) + bytes(bits)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_NOFOLLOW
                         | _O_CLOEXEC, 0o600)
            try:
                _write_all(fd, raw, 0)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _failure(f"writing {path.name}", exc) from exc

    # -- finishing ----------------------------------------------------------------------

    def _place(self, source: Path, name: str, file_id: bytes) -> Path:
        """Link ``source`` into ``files/`` under a free name made from ``name``, then
        remove ``source``. Never overwrites: a name that appears meanwhile is skipped."""
        wanted = safe_name(name)

        def taken(n: str) -> bool:
            return os.path.lexists(self.files_dir / n)

        for attempt in range(FINISH_TRIES):
            try:
                candidate = unique_name(taken, wanted)
            except FileExistsError:
                # Thousands of copies of one name: tag it with the id, then number that.
                stem, ext = split_ext(wanted)
                wanted = safe_name(f"{stem} {file_id.hex()[:16]}{ext}")
                continue
            final = self.files_dir / candidate
            try:
                self._link_new(source, final)
            except FileExistsError:
                log.info("%s appeared while finishing (try %d)", candidate, attempt + 1)
                continue
            except OSError as exc:
                raise _failure(f"moving into files/{candidate}", exc) from exc
            with contextlib.suppress(FileNotFoundError):
                source.unlink()
            _fsync_dir(self.files_dir)
            return final
        raise FileStoreError(f"no free name for {wanted!r} after {FINISH_TRIES} tries",
                             code="io_error")

    def forget_complete(self, file_id: bytes) -> None:
        """Never serve this finished download (a DM file's plaintext: its chunks are not
        the file id's, which are ciphertext)."""
        self._complete.pop(file_id, None)

    @staticmethod
    def _link_new(source: Path, final: Path) -> None:
        """Make ``final`` name ``source``'s data, failing with ``FileExistsError`` if
        ``final`` exists. A hard link is atomic and exclusive; where the file system has
        none, an exclusive empty placeholder is created and then replaced (it is ours)."""
        try:
            os.link(source, final, follow_symlinks=False)
            return
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in _NO_LINK:
                raise
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC,
                     0o600)
        os.close(fd)
        try:
            os.replace(source, final)
        except OSError:
            with contextlib.suppress(OSError):
                final.unlink()
            raise

    def _forget(self, handle: Partial) -> None:
        if self._open.get((handle.kind, handle.file_id)) is handle:
            del self._open[(handle.kind, handle.file_id)]

    # -- serving ------------------------------------------------------------------------

    def add_complete(self, file_id: bytes, path: Path, size: int) -> None:
        """Serve ``file_id`` from ``path`` (a finished download after a restart, a file
        we sent): the router knows these from its database."""
        _check_id(file_id)
        self._complete[file_id] = (Path(path), size)

    def read_chunk(self, file_id: bytes, index: int, chunk_size: int = CHUNK) -> bytes | None:
        """Chunk ``index`` of ``file_id`` from whatever copy has it, or None.

        Looks at an open handle's bitmap, a complete cached file, a complete file known to
        the store (its size must still match), then a closed partial's bitmap on disk.
        """
        hexid = _check_id(file_id)
        if index < 0:
            return None
        for kind in ("download", "cache"):
            handle = self._open.get((kind, file_id))
            if handle is not None and handle.chunk_size == chunk_size and handle.has(index):
                return handle.read_chunk(index)
        cached = self._cache_path(file_id)
        chunk = self._read_whole(cached, None, index, chunk_size)
        if chunk is not None:
            return chunk
        known = self._complete.get(file_id)
        if known is not None:
            chunk = self._read_whole(known[0], known[1], index, chunk_size)
            if chunk is not None:
                return chunk
        for kind in ("download", "cache"):
            if (kind, file_id) in self._open:
                continue
            chunk = self._read_closed(self._dir(kind), hexid, index, chunk_size)
            if chunk is not None:
                return chunk
        return None

    @staticmethod
    def _read_whole(path: Path, size: int | None, index: int, chunk_size: int) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
        except OSError:
            return None
        try:
            actual = os.fstat(fd).st_size
            if size is not None and actual != size:
                return None
            if index >= chunk_count(actual, chunk_size):
                return None
            return _pread_exact(fd, chunk_length(actual, index, chunk_size),
                                index * chunk_size)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _read_closed(self, directory: Path, hexid: str, index: int,
                     chunk_size: int) -> bytes | None:
        have_path = directory / f"{hexid}.have"
        header = self._read_raw(have_path, _HAVE_HEADER.size)
        if header is None or len(header) != _HAVE_HEADER.size:
            return None
        magic, size, got_chunk = _HAVE_HEADER.unpack(header)
        if magic != HAVE_MAGIC or got_chunk != chunk_size or size > FILE_MAX:
            return None
        bits = self._read_have(have_path, size, chunk_size)
        if bits is None or index >= chunk_count(size, chunk_size):
            return None
        if not bits[index >> 3] >> (index & 7) & 1:
            return None
        return self._read_whole(directory / f"{hexid}.part", size, index, chunk_size)

    # -- housekeeping -------------------------------------------------------------------

    def delete(self, file_id: bytes) -> int:
        """Remove every copy of ``file_id`` this store made in ``.partial`` and
        ``.cache`` (closing open handles); return the bytes freed. A finished download in
        ``files/`` is the user's and is never deleted, only no longer served."""
        hexid = _check_id(file_id)
        for kind in ("download", "cache"):
            handle = self._open.pop((kind, file_id), None)
            if handle is not None:
                handle._discard()
        self._complete.pop(file_id, None)
        freed = 0
        for directory in (self.partial_dir, self.cache_dir):
            for suffix in (".part", ".have", ".have.tmp", ""):
                path = directory / f"{hexid}{suffix}"
                try:
                    freed += path.lstat().st_blocks * 512
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise _failure(f"deleting {path.name}", exc) from exc
        return freed

    def entries(self, kind: Kind) -> list[Entry]:
        """What ``.partial`` (``"download"``) or ``.cache`` holds, to rebuild the
        router's view after a restart. Names that are not ours are ignored."""
        found: dict[bytes, Entry] = {}
        directory = self._dir(kind)
        with _io(f"listing {directory}"):
            names = os.listdir(directory)
        for name in names:
            hexid, _, suffix = name.partition(".")
            if len(hexid) != 2 * HASH or suffix not in ("", "part", "have"):
                continue
            try:
                file_id = bytes.fromhex(hexid)
                used = os.lstat(directory / name).st_blocks * 512
            except (ValueError, OSError):
                continue
            old = found.get(file_id)
            complete = suffix == "" or (old is not None and old.complete)
            found[file_id] = Entry(file_id, used + (old.used if old else 0), complete)
        return sorted(found.values(), key=lambda e: e.file_id)

    def usage(self) -> int:
        """Bytes that ``.partial`` and ``.cache`` take on disk (allocated blocks: a
        preallocated partial counts whole, a sparse one what it holds)."""
        total = 0
        for directory in (self.partial_dir, self.cache_dir):
            with _io(f"listing {directory}"), os.scandir(directory) as it:
                for entry in it:
                    with contextlib.suppress(OSError):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
        return total

    def close(self) -> None:
        """Close every open handle, writing its bitmap; the first error is raised after
        all are closed."""
        first: FileStoreError | None = None
        for handle in list(self._open.values()):
            try:
                handle.close()
            except FileStoreError as exc:
                first = first or exc
        if first is not None:
            raise first
