"""Valid and invalid values for any Record, derived from its annotations.

So every message type defined now or later is round-tripped and has each of
its fields broken in every way the schema forbids, without a hand-written
list that could forget one.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from tazcom.common.schema import Len, Match, Range, Record
from tazcom.common.schema import fields as schema_fields

SAMPLES_BY_PATTERN = {
    r"[0-9a-f]{64}": "ab" * 32,
    r"[a-z][a-z0-9_-]{0,31}": "discovery",
    r"\d{1,3}(\.\d{1,3}){3}:\d{1,5}"
    r"|\[[0-9a-f:]{2,39}(%[A-Za-z0-9_.@+-]{1,15})?\]:\d{1,5}": "10.0.0.1:4242",
    r"[0-9a-f]{4}(-[0-9a-f]{4}){3}": "0123-4567-89ab-cdef",
    r"[a-z][a-z0-9_]{0,47}": "no_link",
    r"[0-9a-f]{32}": "cd" * 16,
    r"[a-z][a-z0-9_]{0,15}": "links",
    r"[0-9a-f]{4,64}": "abcd",
}


def _split(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    if get_origin(tp) is typing.Annotated:
        base, *extra = get_args(tp)
        return base, tuple(extra)
    return tp, ()


def example(tp: Any) -> Any:
    """A valid value for annotation ``tp``."""
    base, extra = _split(tp)
    length = next((c for c in extra if isinstance(c, Len)), None)
    rng = next((c for c in extra if isinstance(c, Range)), None)
    match = next((c for c in extra if isinstance(c, Match)), None)
    origin = get_origin(base)
    if origin in (Union, types.UnionType):
        inner = next(a for a in get_args(base) if a is not type(None))
        return example(Annotated[inner, *extra] if extra else inner)
    if origin is Literal:
        return get_args(base)[0]
    if origin is tuple and Ellipsis not in get_args(base):  # tuple[A, B, C]
        return tuple(example(a) for a in get_args(base))
    if origin in (tuple, list):
        n = max(1, length.lo) if length else 1
        return tuple(example(get_args(base)[0]) for _ in range(n))
    if origin is dict:
        kt, vt = get_args(base)
        return {example(kt): example(vt)} if length and length.lo > 0 else {}
    if isinstance(base, type) and issubclass(base, Record):
        return build(base)
    if base is str:
        if match:
            return SAMPLES_BY_PATTERN[match.pattern]
        return "x" * max(1, length.lo if length else 1)
    if base is bytes:
        return b"\x01" * (max(1, length.lo) if length else 4)
    if base is bool:
        return True
    if base is int:
        return int(max(rng.lo, 0)) if rng else 1
    if base is float:
        return float(max(rng.lo, 1.5)) if rng else 1.5
    if base is Any:
        return None
    raise TypeError(base)


def build(cls: type[Record]) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    return cls(**{f.name: example(hints[f.name]) for f in schema_fields(cls)})


def invalid_values(tp: Any) -> list[Any]:
    """Values the schema of ``tp`` must reject (a wrong type, out of bounds)."""
    base, extra = _split(tp)
    length = next((c for c in extra if isinstance(c, Len)), None)
    rng = next((c for c in extra if isinstance(c, Range)), None)
    match = next((c for c in extra if isinstance(c, Match)), None)
    origin = get_origin(base)
    optional = origin in (Union, types.UnionType)
    if optional:
        base = next(a for a in get_args(base) if a is not type(None))
        origin = get_origin(base)
    out: list[Any] = [{"not": "this"}] if origin is not dict else ["a map?", [1], {7: 7}]
    if origin is Literal:
        out += ["surely-not-a-member", 12345]
    elif origin is tuple and Ellipsis not in get_args(base):
        out += ["a string", 7, [], [example(a) for a in get_args(base)] * 2]
        item_bad = invalid_values(get_args(base)[0])
        if item_bad:
            out.append([item_bad[0], *(example(a) for a in get_args(base)[1:])])
    elif origin in (tuple, list):
        out += ["a string", 7]
        if length and length.hi < 100000:
            from tazcom.common.schema import _plain

            out.append([_plain(example(get_args(base)[0]))] * (length.hi + 1))
        item_bad = invalid_values(get_args(base)[0])
        if item_bad:
            out.append([item_bad[0]])
    elif isinstance(base, type) and issubclass(base, Record):
        out += ["a string", 7, {}]
    elif base is str:
        out += [7, b"bytes", None if not optional else 7.5]
        hi = length.hi if length else 1024
        out.append("y" * (hi + 1))
        if match and re.fullmatch(match.pattern, "!bad!") is None:
            out.append("!bad!")
    elif base is bytes:
        out += ["text", 7]
        hi = length.hi if length else 65536
        out.append(b"z" * (hi + 1))
        if length and length.lo > 0:
            out.append(b"z" * (length.lo - 1))
    elif base is bool:
        out += [1, "true"]
    elif base is int:
        out += [1.5, "1", True]
        if rng:
            out.append(int(rng.hi) + 1)
            out.append(int(rng.lo) - 1)
    elif base is float:
        out += ["1.0", True, float("nan"), float("inf")]
        if rng:
            out.append(rng.hi * 2 + 1)
    if not optional and base is not Any:
        out.append(None)
    return out
