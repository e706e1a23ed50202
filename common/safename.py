"""Names for received files: the announced name made safe to create in ``files/``
(docs/files.md, "Disk"; issue 15, "Bad input": file names with path tricks).

The announced name comes from a peer: it is a claim, never a path. ``safe_name`` turns any
string into one plain file name that, joined to a directory, names a new entry directly in
that directory, and that a person reading a listing sees for what it is. No I/O here: the
caller (``services/filestore.py``) creates the file.

What is done, and why
---------------------
* **NFC** first (and last): the same name typed on macOS (NFD) and Linux (NFC) is one name,
  and composed text is what listings show.
* **Path separators** ``/`` and ``\\`` become ``_``, so ``"a/b.txt"`` is ``"a_b.txt"``. Not
  "keep the last component": that would silently drop part of what the sender wrote (and
  turn ``"../../.bashrc"`` into ``".bashrc"``, then ``"bashrc"``, hiding the trick), while
  ``_`` keeps every visible character and can never climb out of the directory. ``\\`` is
  a separator on Windows, where ``files/`` may end up (a share, a sync, a USB stick).
* **Control characters** (category Cc: C0, DEL, C1), **format characters** (Cf: the bidi
  overrides and isolates U+202A..U+202E, U+2066..U+2069, zero-width characters, the BOM),
  **line and paragraph separators** (Zl, Zp) and **lone surrogates** (Cs, which cannot be
  encoded and would make ``open`` fail) become ``_``. Replaced, not removed: ``_`` shows
  that something was there (``"invoice\\u202efdp.exe"`` reads ``"invoice_fdp.exe"``, its
  true extension at the end), and removing could glue a combining mark to the previous
  letter and change the text.
* **Leading dots and white space** are removed: no hidden files, and ``.`` and ``..``
  become empty. **Trailing dots and white space** are removed too: Windows drops them
  silently, so ``"a.txt."`` would open ``"a.txt"`` there.
* An empty result is ``"unnamed"``.
* **Windows reserved names** (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM0``..``COM9``,
  ``LPT0``..``LPT9``, their superscript-digit forms, ``CONIN$``, ``CONOUT$``; in any case,
  whatever the extensions, as Windows does) get a leading ``_``: harmless on Linux, a device
  on Windows. Other characters Windows refuses (``<>:"|?*``) are kept: they are common in
  titles ("Minutes: May") and harmless on the node's own file system.
* **Length**: at most ``NAME_MAX`` (255) bytes of UTF-8 (ext4, XFS, btrfs), cut at a
  character boundary in the stem so the extension (the last ``.suffix``, if at most
  ``EXT_MAX`` bytes) survives: a cut ``photo.jpg`` still opens as a picture.

``unique_name`` then picks ``"name (2).ext"``, ``"name (3).ext"``... for a name that
exists, within the same 255 bytes.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Collection

#: Longest file name, in bytes of UTF-8 (Linux NAME_MAX).
NAME_MAX = 255
#: Longest suffix kept as the extension when a name is cut or numbered.
EXT_MAX = 32
#: The name of a file whose announced name has nothing left.
FALLBACK = "unnamed"
#: Stands for every refused character.
REPLACEMENT = "_"
#: Names tried by ``unique_name`` before it gives up: ``name (2)`` to ``name (LIMIT)``.
UNIQUE_LIMIT = 10_000

_SEPARATORS = frozenset("/\\")
#: Unicode categories refused in a name: controls, format characters (bidi, zero width),
#: surrogates, line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{p}{d}" for p in ("COM", "LPT") for d in "0123456789\u00b9\u00b2\u00b3"}
)


def _refused(ch: str) -> bool:
    return ch in _SEPARATORS or unicodedata.category(ch) in _REFUSED_CATEGORIES


def _strip(s: str) -> str:
    """Remove leading and trailing dots and white space."""
    start, end = 0, len(s)
    while start < end and (s[start] == "." or s[start].isspace()):
        start += 1
    while end > start and (s[end - 1] == "." or s[end - 1].isspace()):
        end -= 1
    return s[start:end]


def _reserved(name: str) -> bool:
    """Windows treats ``NUL.txt`` and ``nul .tar.gz`` as the device ``NUL``."""
    return _strip(name.split(".", 1)[0]).upper() in _RESERVED


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def split_ext(name: str) -> tuple[str, str]:
    """``("photo", ".jpg")`` for ``"photo.jpg"``; no extension for a leading dot only
    (``".profile"``), for a trailing one, or for a suffix over ``EXT_MAX`` bytes (then it
    is not an extension but part of a long name, and may be cut)."""
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1 or _utf8_len(name[dot:]) > EXT_MAX:
        return name, ""
    return name[:dot], name[dot:]


def _fit(stem: str, ext: str, tail: str = "", limit: int = NAME_MAX) -> str:
    """``stem + tail + ext`` cut in ``stem`` (at a character boundary) to ``limit`` bytes.

    ``stem`` is not empty and does not start with a dot or white space, and
    ``tail + ext`` is at most ``EXT_MAX + 24`` bytes, so some stem always remains. The
    result is NFC: cutting may split a base letter from its combining marks, and NFC of
    a cut string can even be longer than the cut, so it is checked after normalizing.
    """
    budget = limit - _utf8_len(tail + ext)
    name = unicodedata.normalize("NFC", stem + tail + ext)
    if _utf8_len(name) <= limit:
        return name
    # Cut by bytes first (cheap for a huge name), then trim whole characters until the
    # normalized result fits. A cut stem loses its trailing dots and white space: legal
    # before ".jpg" or " (2)", but confusing, and not allowed at the very end.
    stem = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
    while True:
        cut = _strip(stem) or FALLBACK
        name = unicodedata.normalize("NFC", cut + tail + ext)
        if _utf8_len(name) <= limit:
            return name
        stem = stem[:-1]


def safe_name(announced: str) -> str:
    """A file name safe to create in ``files/``, for any announced string.

    The result is not empty, at most ``NAME_MAX`` bytes of UTF-8, NFC, contains no
    path separator, control, format, surrogate or line separator character, does not
    start with a dot or white space or end with a dot or white space (so is never ``.``
    or ``..``), and is no Windows device name. ``safe_name(safe_name(x)) == safe_name(x)``,
    and an ordinary name (``"report.pdf"``) is returned unchanged.
    """
    s = unicodedata.normalize("NFC", announced)
    s = "".join(REPLACEMENT if _refused(ch) else ch for ch in s)
    # NFC again: a replacement can only separate characters, never compose them, but
    # normalizing twice costs nothing and makes the guarantee local.
    s = _strip(unicodedata.normalize("NFC", s)) or FALLBACK
    if _reserved(s):
        s = REPLACEMENT + s
    stem, ext = split_ext(s)
    return _fit(stem, ext)


def unique_name(existing: Callable[[str], bool] | Collection[str], name: str) -> str:
    """``name`` if it is not taken, else ``"stem (2).ext"``, ``"stem (3).ext"``...

    ``existing`` is a directory listing (any collection of names) or a callback that
    says whether a name is taken (``lambda n: os.path.lexists(os.path.join(d, n))``).
    ``name`` should come from ``safe_name``; the numbered names are cut to fit
    ``NAME_MAX`` like it. A caller that creates the file must still do so without
    overwriting (the name may appear meanwhile) and ask again if it did.
    Raises ``FileExistsError`` after ``UNIQUE_LIMIT`` names.
    """
    taken: Callable[[str], bool] = existing if callable(existing) else existing.__contains__
    if not taken(name):
        return name
    stem, ext = split_ext(name)
    for n in range(2, UNIQUE_LIMIT + 1):
        candidate = _fit(stem, ext, f" ({n})")
        if not taken(candidate):
            return candidate
    raise FileExistsError(f"{name!r} and {UNIQUE_LIMIT - 1} numbered copies exist")
