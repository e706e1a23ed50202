"""Typed records: the one definition of every bus event, request and wire message.

Theory of operation
-------------------
A message type is a frozen, keyword-only dataclass deriving from ``Record``.
Its annotations *are* its schema: ``str``, ``int``, ``float``, ``bool``,
``bytes``, ``tuple[T, ...]``, ``T | None``, ``Literal[...]`` and nested
``Record`` types, optionally wrapped in ``Annotated[T, Len(..)]``,
``Annotated[T, Range(..)]`` or ``Annotated[T, Match(..)]``.

``Record.from_dict`` validates a decoded msgpack map against that schema: every
type and size is checked, unknown keys are ignored (so newer senders can add
optional fields), a field with a default may be absent. Any mismatch raises
``SchemaError`` naming the field, never another exception. Validators are
compiled once per class, on first use.

Sizes have defaults (``DEFAULT_MAX_*``) so that no field is unbounded even
when its declaration forgets a ``Len``: the threat is a peer or a buggy
service sending a huge string that every subscriber then copies.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from .errors import SchemaError

DEFAULT_MAX_STR = 1024
DEFAULT_MAX_BYTES = 65536
DEFAULT_MAX_ITEMS = 1024
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1


@dataclasses.dataclass(frozen=True)
class Len:
    """Length bounds (characters, bytes or items), inclusive."""

    lo: int = 0
    hi: int = DEFAULT_MAX_STR


@dataclasses.dataclass(frozen=True)
class Range:
    """Numeric bounds, inclusive."""

    lo: float = INT64_MIN
    hi: float = UINT64_MAX


@dataclasses.dataclass(frozen=True)
class Match:
    """Full-match regular expression for a string."""

    pattern: str


Validator = Callable[[Any, str], Any]

HEX32 = Match(r"[0-9a-f]{64}")


def _fail(path: str, why: str) -> typing.NoReturn:
    raise SchemaError(f"{path}: {why}", code="bad_message")


def _compile(tp: Any) -> Validator:
    """Build a validator for annotation ``tp``."""
    constraints: tuple[Any, ...] = ()
    if get_origin(tp) is typing.Annotated:
        tp, *extra = get_args(tp)
        constraints = tuple(extra)
    length = next((c for c in constraints if isinstance(c, Len)), None)
    rng = next((c for c in constraints if isinstance(c, Range)), None)
    match = next((c for c in constraints if isinstance(c, Match)), None)
    origin = get_origin(tp)

    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = _compile(typing.Annotated[args[0], *constraints] if constraints else args[0])
        if len(args) != 1:
            raise TypeError(f"only T | None unions are supported, got {tp}")

        def v_optional(x: Any, path: str) -> Any:
            return None if x is None else inner(x, path)

        return v_optional

    if origin is Literal:
        allowed = frozenset(get_args(tp))

        def v_literal(x: Any, path: str) -> Any:
            if not isinstance(x, str | int) or isinstance(x, bool) or x not in allowed:
                _fail(path, f"must be one of {sorted(map(str, allowed))}")
            return x

        return v_literal

    if origin in (tuple, list):
        args = get_args(tp)
        item = _compile(args[0])
        lo, hi = (length.lo, length.hi) if length else (0, DEFAULT_MAX_ITEMS)

        def v_seq(x: Any, path: str) -> Any:
            if not isinstance(x, list | tuple):
                _fail(path, "must be an array")
            if not lo <= len(x) <= hi:
                _fail(path, f"must have {lo}..{hi} items")
            return tuple(item(e, f"{path}[{i}]") for i, e in enumerate(x))

        return v_seq

    if origin is dict:
        kt, vt = get_args(tp)
        kv, vv = _compile(kt), _compile(vt)
        hi = length.hi if length else DEFAULT_MAX_ITEMS

        def v_map(x: Any, path: str) -> Any:
            if not isinstance(x, dict):
                _fail(path, "must be a map")
            if len(x) > hi:
                _fail(path, f"must have at most {hi} entries")
            return {kv(k, f"{path}.key"): vv(v, f"{path}[{k!r}]") for k, v in x.items()}

        return v_map

    if isinstance(tp, type) and issubclass(tp, Record):

        def v_record(x: Any, path: str) -> Any:
            if isinstance(x, tp):
                return x
            if not isinstance(x, dict):
                _fail(path, "must be a map")
            return tp._from_dict(x, path)

        return v_record

    if tp is str:
        lo, hi = (length.lo, length.hi) if length else (0, DEFAULT_MAX_STR)
        rx = re.compile(match.pattern) if match else None

        def v_str(x: Any, path: str) -> Any:
            if not isinstance(x, str):
                _fail(path, "must be a string")
            if not lo <= len(x) <= hi:
                _fail(path, f"must be {lo}..{hi} characters")
            if rx is not None and rx.fullmatch(x) is None:
                _fail(path, "has the wrong format")
            return x

        return v_str

    if tp is bytes:
        lo, hi = (length.lo, length.hi) if length else (0, DEFAULT_MAX_BYTES)

        def v_bytes(x: Any, path: str) -> Any:
            if not isinstance(x, bytes):
                _fail(path, "must be binary")
            if not lo <= len(x) <= hi:
                _fail(path, f"must be {lo}..{hi} bytes")
            return x

        return v_bytes

    if tp is bool:

        def v_bool(x: Any, path: str) -> Any:
            if not isinstance(x, bool):
                _fail(path, "must be a boolean")
            return x

        return v_bool

    if tp is int:
        lo_i, hi_i = (rng.lo, rng.hi) if rng else (INT64_MIN, UINT64_MAX)

        def v_int(x: Any, path: str) -> Any:
            if not isinstance(x, int) or isinstance(x, bool):
                _fail(path, "must be an integer")
            if not lo_i <= x <= hi_i:
                _fail(path, f"must be in {lo_i}..{hi_i}")
            return x

        return v_int

    if tp is float:
        lo_f, hi_f = (rng.lo, rng.hi) if rng else (-math.inf, math.inf)

        def v_float(x: Any, path: str) -> Any:
            if not isinstance(x, int | float) or isinstance(x, bool):
                _fail(path, "must be a number")
            x = float(x)
            if not math.isfinite(x) or not lo_f <= x <= hi_f:
                _fail(path, f"must be a finite number in {lo_f}..{hi_f}")
            return x

        return v_float

    if tp is Any:
        return lambda x, path: x

    raise TypeError(f"unsupported annotation in a Record: {tp!r}")


MISSING = dataclasses.MISSING
CLASSVAR_PREFIXES = ("ClassVar", "typing.ClassVar")


class FrozenInstanceError(AttributeError):
    """A record's fields cannot be changed."""


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    name: str
    default: Any = MISSING

    @property
    def required(self) -> bool:
        return self.default is MISSING


def fields(cls: type) -> tuple[Field, ...]:
    """The fields of a record class, in declaration order (bases first)."""
    return cls.__record_fields__  # type: ignore[attr-defined]


class Record:
    """Base of every message type: frozen, built from keyword arguments only.

    ``record`` makes a class a record without ``dataclasses``: every process
    imports about a hundred message types at start, and dataclasses' generated
    methods cost more start-up time than anything else (bench/discovery_time.py).
    """

    __record_fields__: ClassVar[tuple[Field, ...]] = ()
    _fields_compiled: ClassVar[tuple[tuple[str, Validator, bool], ...] | None] = None

    def __init__(self, **kwargs: Any) -> None:
        values = {}
        for f in self.__record_fields__:
            value = kwargs.pop(f.name, f.default)
            if value is MISSING:
                raise TypeError(f"{type(self).__name__}() missing argument {f.name!r}")
            values[f.name] = value
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected {sorted(kwargs)}")
        object.__getattribute__(self, "__dict__").update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def replace(self, **changes: Any) -> typing.Self:
        """A copy with some fields changed (``dataclasses.replace`` for records)."""
        values = {f.name: self.__dict__[f.name] for f in self.__record_fields__}
        values.update(changes)  # an unknown name: the constructor says which
        return type(self)(**values)

    def _values(self) -> tuple[Any, ...]:
        d = self.__dict__
        return tuple(d[f.name] for f in self.__record_fields__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.__class__, self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={self.__dict__[f.name]!r}" for f in self.__record_fields__)
        return f"{type(self).__name__}({inner})"

    @classmethod
    def _compiled(cls) -> tuple[tuple[str, Validator, bool], ...]:
        compiled = cls.__dict__.get("_fields_compiled")
        if compiled is None:
            hints = typing.get_type_hints(cls, include_extras=True)
            compiled = tuple((f.name, _compile(hints[f.name]), f.required)
                             for f in cls.__record_fields__)
            cls._fields_compiled = compiled
        return compiled

    @classmethod
    def _from_dict(cls, data: dict[Any, Any], path: str) -> Any:
        kwargs = {}
        for name, validate, required in cls._compiled():
            if name in data:
                kwargs[name] = validate(data[name], f"{path}.{name}" if path else name)
            elif required:
                _fail(f"{path}.{name}" if path else name, "is missing")
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, data: Any) -> typing.Self:
        """Validate a decoded map and build the record; raises ``SchemaError``."""
        if not isinstance(data, dict):
            _fail(cls.__name__, "must be a map")
        return cls._from_dict(data, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of fields (nested records become dicts), ready for msgpack."""
        return {f: _plain(getattr(self, f)) for f, _, _ in self._compiled()}


def _plain(x: Any) -> Any:
    if isinstance(x, Record):
        return x.to_dict()
    if isinstance(x, tuple | list):
        return [_plain(e) for e in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def record(cls: type) -> type:
    """Make ``cls`` a record: its annotated fields (after its bases'), defaults from the
    class body, a keyword-only constructor, equality, hashing and immutability."""
    found: dict[str, Field] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        for name, annotation in inspect.get_annotations(klass).items():
            if isinstance(annotation, str) and annotation.startswith(CLASSVAR_PREFIXES):
                continue
            if getattr(annotation, "__origin__", None) is ClassVar or annotation is ClassVar:
                continue
            default = klass.__dict__.get(name, MISSING)
            if default is MISSING and name in found:
                default = found[name].default
            found[name] = Field(name=name, default=default)
    cls.__record_fields__ = tuple(found.values())
    cls._fields_compiled = None
    return cls


def to_jsonable(x: Any) -> Any:
    """Convert a decoded message to JSON-friendly values (bytes become hex)."""
    if isinstance(x, Record):
        x = x.to_dict()
    if isinstance(x, bytes):
        return x.hex()
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(e) for e in x]
    return x
