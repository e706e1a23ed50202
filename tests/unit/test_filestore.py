"""FileStore: verified chunks written in place, a bitmap that survives restarts, finished
files moved into files/ without overwriting anything, and a full disk that fails one
transfer and corrupts nothing (docs/files.md, "Disk"; services/filestore.py)."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tazcom.common.download import Download
from tazcom.common.errors import LocalProtocolError
from tazcom.services import filestore as fs_module
from tazcom.services.filestore import FileStore, FileStoreError

CS = 1024  # a small chunk size keeps files small; the code does not care


def fid(n: int) -> bytes:
    return bytes([n]) * 32


def content(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks(data: bytes, cs: int = CS) -> list[bytes]:
    return [data[i:i + cs] for i in range(0, len(data), cs)] or [b""]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for a directory)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    s = FileStore(tmp_path, sync=False)
    yield s
    s.close()


# -- writing, resuming, finishing -------------------------------------------------------


def test_out_of_order_chunks_make_the_exact_file(store: FileStore) -> None:
    data = content(10 * CS + 5)
    parts = chunks(data)
    p = store.open_partial(fid(1), len(data), CS)
    assert p.count == 11 and not p.complete and p.have == b"\x00\x00"
    order = list(range(p.count))
    random.Random(7).shuffle(order)
    for i in order:
        assert p.write_chunk(i, parts[i])
        assert p.has(i) and p.read_chunk(i) == parts[i]
    assert p.complete and p.have == b"\xff\x07"
    final = p.finish("report.pdf")
    assert final == store.files_dir / "report.pdf"
    assert final.read_bytes() == data
    assert os.listdir(store.partial_dir) == []
    assert p.closed
    # The finished file is served.
    assert store.read_chunk(fid(1), 10, CS) == parts[10]
    assert store.read_chunk(fid(1), 11, CS) is None


def test_a_chunk_written_twice_is_harmless(store: FileStore) -> None:
    data = content(3 * CS)
    parts = chunks(data)
    p = store.open_partial(fid(2), len(data), CS)
    assert p.write_chunk(1, parts[1])
    assert not p.write_chunk(1, parts[1])
    assert p.verified == 1
    for i in (0, 2):
        p.write_chunk(i, parts[i])
    assert p.finish("x").read_bytes() == data


def test_opening_twice_gives_the_same_handle(store: FileStore) -> None:
    p = store.open_partial(fid(3), 5 * CS, CS)
    assert store.open_partial(fid(3), 5 * CS, CS) is p
    with pytest.raises(LocalProtocolError):
        store.open_partial(fid(3), 6 * CS, CS)


def test_resume_after_reopen(tmp_path: Path) -> None:
    data = content(20 * CS + 100)
    parts = chunks(data)
    first = FileStore(tmp_path, flush_chunks=1000, sync=False)
    p = first.open_partial(fid(4), len(data), CS)
    for i in range(0, 21, 2):
        p.write_chunk(i, parts[i])
    p.close()  # writes the bitmap whatever the batch
    second = FileStore(tmp_path, sync=False)
    q = second.open_partial(fid(4), len(data), CS)
    assert q.verified == 11
    assert [q.has(i) for i in range(21)] == [i % 2 == 0 for i in range(21)]
    # The bitmap is the one the download core takes to resume.
    d = Download(fid(4), len(data), CS, have=q.have)
    assert d.verified == 11
    for i in range(1, 21, 2):
        q.write_chunk(i, parts[i])
    assert q.finish("big.bin").read_bytes() == data


def test_a_crash_loses_at_most_one_batch(tmp_path: Path) -> None:
    data = content(10 * CS)
    parts = chunks(data)
    first = FileStore(tmp_path, flush_chunks=4, sync=False)
    p = first.open_partial(fid(5), len(data), CS)
    for i in range(10):
        p.write_chunk(i, parts[i])
    # "kill -9": no close, the bitmap on disk is from the last batch.
    second = FileStore(tmp_path, sync=False)
    q = second.open_partial(fid(5), len(data), CS)
    assert q.verified == 8 and all(q.has(i) for i in range(8))
    assert all(q.read_chunk(i) == parts[i] for i in range(8))
    p._discard()


def test_the_bitmap_is_written_after_some_time(tmp_path: Path) -> None:
    clock = Clock()
    s = FileStore(tmp_path, flush_chunks=1000, flush_seconds=2.0, clock=clock, sync=True)
    p = s.open_partial(fid(6), 4 * CS, CS)
    p.write_chunk(0, bytes(CS))
    assert not p.have_path.exists()
    clock.now = 1.0
    p.flush_if_due()
    assert not p.have_path.exists()
    clock.now = 2.5
    p.flush_if_due()  # the router's timer: chunks stopped coming
    assert p.have_path.exists()
    p.write_chunk(1, bytes(CS))
    clock.now = 5.0
    p.write_chunk(2, bytes(CS))  # a write past the interval flushes by itself
    assert FileStore._read_have(p.have_path, 4 * CS, CS) == bytearray(b"\x07")
    p.close()


@pytest.mark.parametrize(
    "have",
    [b"garbage", b"", fs_module.HAVE_MAGIC + bytes(20),
     # the header of another size, a bit past the end
     fs_module._HAVE_HEADER.pack(fs_module.HAVE_MAGIC, 99, CS) + b"\x01",
     fs_module._HAVE_HEADER.pack(fs_module.HAVE_MAGIC, 3 * CS, CS) + b"\x08"],
)
def test_a_bad_bitmap_starts_over(tmp_path: Path, have: bytes) -> None:
    s = FileStore(tmp_path, sync=False)
    p = s.open_partial(fid(7), 3 * CS, CS)
    p.write_chunk(0, bytes(CS))
    p.close()
    p.have_path.write_bytes(have)
    q = FileStore(tmp_path, sync=False).open_partial(fid(7), 3 * CS, CS)
    assert q.verified == 0 and q.have == b"\x00"
    q.close()


def test_a_missing_data_file_starts_over(tmp_path: Path) -> None:
    s = FileStore(tmp_path, sync=False)
    p = s.open_partial(fid(8), 3 * CS, CS)
    p.write_chunk(0, bytes(CS))
    p.close()
    p.data_path.unlink()  # the bitmap alone would claim bytes that are gone
    q = FileStore(tmp_path, sync=False).open_partial(fid(8), 3 * CS, CS)
    assert q.verified == 0
    q.close()


def test_an_empty_file(store: FileStore) -> None:
    p = store.open_partial(fid(9), 0, CS)
    assert p.count == 1
    assert p.write_chunk(0, b"")
    assert p.finish("empty").read_bytes() == b""
    assert store.read_chunk(fid(9), 0, CS) == b""


def test_caller_bugs_are_refused(store: FileStore) -> None:
    p = store.open_partial(fid(10), 2 * CS + 1, CS)
    for index, data in ((0, bytes(CS - 1)), (2, bytes(2)), (3, b""), (-1, b"")):
        with pytest.raises(LocalProtocolError):
            p.write_chunk(index, data)
    for bad in (b"short", "a" * 32, bytes(33)):
        with pytest.raises(LocalProtocolError):
            store.open_partial(bad, 10, CS)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        p.finish()  # a download needs its name
    with pytest.raises(FileStoreError) as info:
        p.finish("x")
    assert info.value.code == "incomplete"
    assert p.data_path.exists() and not p.closed


# -- the final name ---------------------------------------------------------------------


def _complete(store: FileStore, n: int, data: bytes) -> fs_module.Partial:
    p = store.open_partial(fid(n), len(data), CS)
    for i, c in enumerate(chunks(data)):
        p.write_chunk(i, c)
    return p


def test_finish_never_overwrites(store: FileStore) -> None:
    old = store.files_dir / "photo.jpg"
    old.write_bytes(b"the user's photo")
    (store.files_dir / "photo (2).jpg").write_bytes(b"another")
    os.symlink("/nonexistent", store.files_dir / "photo (3).jpg")  # a dangling link counts
    final = _complete(store, 11, content(2 * CS)).finish("photo.jpg")
    assert final.name == "photo (4).jpg"
    assert old.read_bytes() == b"the user's photo"
    assert (store.files_dir / "photo (2).jpg").read_bytes() == b"another"


def test_finish_when_the_name_appears_meanwhile(store: FileStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_link = os.link
    raced: list[str] = []

    def link(src: str | Path, dst: str | Path, **kw: object) -> None:
        if not raced:  # someone creates the name between our check and our link
            raced.append(str(dst))
            Path(dst).write_bytes(b"theirs")
        real_link(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", link)
    data = content(CS + 3)
    final = _complete(store, 12, data).finish("notes.txt")
    assert Path(raced[0]).name == "notes.txt" and Path(raced[0]).read_bytes() == b"theirs"
    assert final.name == "notes (2).txt" and final.read_bytes() == data


def test_finish_without_hard_links(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(*args: object, **kw: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    (store.files_dir / "a.bin").write_bytes(b"keep")
    data = content(3 * CS)
    final = _complete(store, 13, data).finish("a.bin")
    assert final.name == "a (2).bin" and final.read_bytes() == data
    assert (store.files_dir / "a.bin").read_bytes() == b"keep"
    assert os.listdir(store.partial_dir) == []


@pytest.mark.parametrize(
    ("announced", "expected"),
    [("../../../etc/passwd", "_.._.._etc_passwd"), ("/abs/x", "_abs_x"), ("..", "unnamed"),
     (".profile", "profile"), ("a\x00\u202e.txt", "a__.txt"), ("NUL", "_NUL")],
)
def test_names_with_path_tricks_stay_in_files(store: FileStore, announced: str,
                                              expected: str) -> None:
    final = _complete(store, 14, b"z").finish(announced)
    assert final.parent == store.files_dir and final.name == expected


def test_nothing_outside_files_is_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "identity").write_bytes(b"secret")
    (home / "store.sqlite").write_bytes(b"db")
    (tmp_path / "outside").write_bytes(b"neighbour")
    before = {k: v for k, v in tree(tmp_path).items() if not k.startswith("home/files")}
    s = FileStore(home, flush_chunks=2)
    for n, name in enumerate(["../../outside", "../store.sqlite", "/etc/passwd", "keys/x",
                              "..", "\\..\\..\\x"]):
        data = content(4 * CS + n, seed=n)
        p = _complete(s, 20 + n, data)
        assert p.finish(name).read_bytes() == data
    c = s.open_cache(fid(40), 3 * CS, CS)
    c.write_chunk(1, bytes(CS))
    c.close()
    s.delete(fid(40))
    s.close()
    after = {k: v for k, v in tree(tmp_path).items() if not k.startswith("home/files")}
    assert after == before


# -- serving and the cache --------------------------------------------------------------


def test_read_chunk_from_every_kind_of_copy(tmp_path: Path) -> None:
    s = FileStore(tmp_path, sync=False)
    data = content(5 * CS + 7)
    parts = chunks(data)
    p = s.open_partial(fid(30), len(data), CS)
    p.write_chunk(2, parts[2])
    p.write_chunk(5, parts[5])
    assert s.read_chunk(fid(30), 2, CS) == parts[2]   # open, from memory's bitmap
    assert s.read_chunk(fid(30), 5, CS) == parts[5]   # the short last chunk
    assert s.read_chunk(fid(30), 1, CS) is None       # not written
    assert s.read_chunk(fid(30), 2, 2 * CS) is None   # another chunk size
    assert s.read_chunk(fid(30), 9, CS) is None and s.read_chunk(fid(30), -1, CS) is None
    assert s.read_chunk(fid(31), 0, CS) is None       # unknown file
    p.close()
    fresh = FileStore(tmp_path, sync=False)           # closed: from the bitmap on disk
    assert fresh.read_chunk(fid(30), 2, CS) == parts[2]
    assert fresh.read_chunk(fid(30), 1, CS) is None
    assert fresh.read_chunk(fid(30), 2, 2 * CS) is None
    # A finished file is served after a restart once the router names it.
    q = _complete(fresh, 32, data)
    final = q.finish("served.bin")
    later = FileStore(tmp_path, sync=False)
    assert later.read_chunk(fid(32), 0, CS) is None
    later.add_complete(fid(32), final, len(data))
    assert later.read_chunk(fid(32), 3, CS) == parts[3]
    final.write_bytes(b"edited by the user")          # another size: no longer served
    assert later.read_chunk(fid(32), 0, CS) is None


def test_cache_files(store: FileStore) -> None:
    data = content(4 * CS)
    parts = chunks(data)
    c = store.open_cache(fid(33), len(data), CS)
    assert c.data_path.parent == store.cache_dir
    for i in (3, 1, 0):
        c.write_chunk(i, parts[i])
    assert store.read_chunk(fid(33), 1, CS) == parts[1]
    [entry] = store.entries("cache")
    assert entry.file_id == fid(33) and not entry.complete
    c.write_chunk(2, parts[2])
    final = c.finish()
    assert final == store.cache_dir / fid(33).hex() and final.read_bytes() == data
    assert sorted(os.listdir(store.cache_dir)) == [fid(33).hex()]
    [entry] = store.entries("cache")
    assert entry.complete and entry.used >= len(data)
    assert store.read_chunk(fid(33), 2, CS) == parts[2]
    assert store.usage() >= len(data)


def test_delete_and_usage(store: FileStore) -> None:
    assert store.usage() == 0
    p = store.open_partial(fid(34), 8 * CS, CS)
    p.write_chunk(0, bytes(CS))
    p.flush()
    c = store.open_cache(fid(34), 8 * CS, CS)
    c.write_chunk(0, bytes(CS))
    assert store.usage() >= 2 * 8 * CS  # preallocated in full
    assert [e.file_id for e in store.entries("download")] == [fid(34)]
    assert store.delete(fid(34)) >= 2 * 8 * CS
    assert store.usage() == 0 and p.closed and c.closed
    assert store.read_chunk(fid(34), 0, CS) is None
    assert store.entries("download") == [] and store.entries("cache") == []


def test_delete_keeps_finished_files(store: FileStore) -> None:
    final = _complete(store, 35, b"kept").finish("kept.txt")
    store.delete(fid(35))
    assert final.read_bytes() == b"kept"
    assert store.read_chunk(fid(35), 0, CS) is None


def test_sparse_files(tmp_path: Path) -> None:
    s = FileStore(tmp_path, preallocate=False, sync=False)
    p = s.open_partial(fid(36), 64 * CS, CS)
    assert p.data_path.stat().st_size == 64 * CS
    p.write_chunk(63, bytes(CS))
    p.close()
    assert s.usage() < 64 * CS


# -- a full disk ------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real ENOSPC. Skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                           str(mnt)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        # A test that failed may have left a file open: then detach lazily, so no mount
        # outlives the test whatever happened.
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(4096))
    finally:
        os.close(fd)


def test_disk_full_when_preallocating(tiny_disk: Path) -> None:
    s = FileStore(tiny_disk, sync=False)
    (s.files_dir / "existing.txt").write_bytes(b"precious")
    before = tree(tiny_disk)
    with pytest.raises(FileStoreError) as info:
        s.open_partial(fid(50), 4 * 1024 * 1024, CS)
    assert info.value.code == "disk_full" and "disk full" in str(info.value)
    assert tree(tiny_disk) == before  # the file it created is gone, nothing else changed


def test_disk_full_when_writing_the_bitmap(tiny_disk: Path) -> None:
    s = FileStore(tiny_disk, flush_chunks=1, sync=True)
    data = content(256 * CS)
    parts = chunks(data)
    (s.files_dir / "existing.txt").write_bytes(b"precious")
    p = s.open_partial(fid(51), len(data), CS)
    p.write_chunk(0, parts[0])  # a bitmap is on disk
    filler = tiny_disk / "filler"
    fill(filler)
    with pytest.raises(FileStoreError) as info:
        p.write_chunk(1, parts[1])  # the chunk fits (preallocated); its bitmap does not
    assert info.value.code == "disk_full"
    assert FileStore._read_have(p.have_path, len(data), CS) == bytearray(b"\x01") + bytes(31)
    assert not (s.partial_dir / (fid(51).hex() + ".have.tmp")).exists()
    assert (s.files_dir / "existing.txt").read_bytes() == b"precious"
    # Space comes back: the same handle carries on and finishes.
    filler.unlink()
    for i in range(2, len(parts)):
        p.write_chunk(i, parts[i])
    assert p.finish("done.bin").read_bytes() == data
    assert (s.files_dir / "existing.txt").read_bytes() == b"precious"


def test_disk_full_when_writing_a_sparse_chunk(tiny_disk: Path) -> None:
    s = FileStore(tiny_disk, flush_chunks=1000, sync=False, preallocate=False)
    (s.files_dir / "existing.txt").write_bytes(b"precious")
    size = 2 * 1024 * 1024  # larger than the disk: fine while sparse
    p = s.open_partial(fid(52), size, CS)
    p.write_chunk(0, bytes(CS))
    fill(tiny_disk / "filler")
    with pytest.raises(FileStoreError) as info:
        for i in range(1, size // CS):
            p.write_chunk(i, bytes([i & 0xFF]) * CS)
    assert info.value.code == "disk_full"
    failed = next(i for i in range(p.count) if not p.has(i))
    assert p.verified == failed < p.count  # the bitmap never claims the chunk that failed
    with pytest.raises(FileStoreError):
        p.close()  # nor can the bitmap be written; the handle is closed anyway
    assert p.closed
    assert (s.files_dir / "existing.txt").read_bytes() == b"precious"


def test_disk_full_when_finishing(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory entry needs no block on tmpfs, so the link fails by injection."""
    data = content(2 * CS)
    p = _complete(store, 53, data)
    (store.files_dir / "x.bin").write_bytes(b"old")

    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "link", full)
        with pytest.raises(FileStoreError) as info:
            p.finish("x.bin")
    assert info.value.code == "disk_full"
    assert not p.closed and p.data_path.read_bytes() == data  # left for a retry
    assert sorted(os.listdir(store.files_dir)) == [".cache", ".partial", "x.bin"]
    assert (store.files_dir / "x.bin").read_bytes() == b"old"
    assert p.finish("x.bin").name == "x (2).bin"
