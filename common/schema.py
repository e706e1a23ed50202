"""Typed records: the one definition of every message TAZCOM sends or stores.

Theory of operation
-------------------
A message type is a class deriving from ``Record`` (a msgpack map on the wire)
or ``ArrayRecord`` (a msgpack array: compact, for what crosses every link for
every message), made a record by ``@record`` or by a registry's decorator
(``registry``). Its annotations *are* its schema: ``str``, ``int``, ``float``,
``bool``, ``bytes``, ``tuple[T, ...]`` (an array), ``tuple[A, B, C]`` (an
array of exactly those), ``dict[K, V]``, ``T | None``, ``Literal[...]`` and
nested records, optionally wrapped in ``Annotated[T, constraint, ...]``:

* ``Len(lo, hi)``: characters of a string (UTF-8 bytes with ``utf8=True``),
  bytes of a binary, items of an array or map;
* ``Range(lo, hi)``: a number's bounds;
* ``Match(pattern)``: a string's full match;
* ``Printable()``: a string without control characters;
* ``Clip()``: text for people: the constructor cuts a longer string to the
  ``Len`` bound (so a sender never trims by hand), decoding still refuses it;
* ``Key("from")``: the map key on the wire, when it is not a Python name;
* ``Spread()``: the last field of an array record whose items are the rest of
  the array (``[id, id, ...]``).

Every bound is inclusive and every limit comes from ``common.limits``. A
constraint may carry its own reject ``code``; otherwise an error has the
record's ``CODE`` (``bad_message`` unless the class says otherwise).

**An invalid record cannot be built.** The constructor checks every field
against its annotation and raises ``SchemaError`` naming the field (h11's
rule); ``from_dict``/``from_array`` check a decoded message the same way
(unknown map keys are ignored, so newer senders may add optional fields; a
field with a default may be absent). Sequences become tuples, ints become
floats where a float is declared, nested maps become records.

Each class's checks are compiled once, on first use, into one Python function
(constructor, decoder, encoder), like ``dataclasses`` and ``attrs`` do: the
checks run inline, a failing value is handed to the slow validator of that
field only to name what is wrong. Compiling on first use keeps start-up cheap:
every process imports about a hundred message types and builds a few.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import sys
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
    """Length bounds (characters, or UTF-8 bytes with ``utf8``; bytes; items), inclusive."""

    lo: int = 0
    hi: int = DEFAULT_MAX_STR
    utf8: bool = False


@dataclasses.dataclass(frozen=True)
class Range:
    """Numeric bounds, inclusive."""

    lo: float = INT64_MIN
    hi: float = UINT64_MAX


@dataclasses.dataclass(frozen=True)
class Match:
    """Full-match regular expression for a string."""

    pattern: str


@dataclasses.dataclass(frozen=True)
class Printable:
    """A string of printable characters only (``str.isprintable``)."""


@dataclasses.dataclass(frozen=True)
class Code:
    """The reject code of any fault in this field (else the record's ``CODE``)."""

    code: str


@dataclasses.dataclass(frozen=True)
class Clip:
    """Text for people: built records cut it to its ``Len``; decoded ones must fit."""


@dataclasses.dataclass(frozen=True)
class Key:
    """The field's key in the map on the wire (e.g. ``from``, a Python keyword)."""

    name: str


@dataclasses.dataclass(frozen=True)
class Spread:
    """The last field of an array record: its items are the rest of the array."""


Validator = Callable[[Any, str], Any]

HEX32 = Match(r"[0-9a-f]{64}")
MISSING: Any = dataclasses.MISSING
CLASSVAR_PREFIXES = ("ClassVar", "typing.ClassVar")


class _Parts:
    """An annotation split into its base type and its constraints."""

    __slots__ = ("base", "clip", "code", "key", "length", "match", "printable", "rng",
                 "spread")

    def __init__(self, tp: Any) -> None:
        extra: tuple[Any, ...] = ()
        if get_origin(tp) is typing.Annotated:
            tp, *rest = get_args(tp)
            extra = tuple(rest)
        self.base = tp
        self.length: Len | None = next((c for c in extra if isinstance(c, Len)), None)
        self.rng: Range | None = next((c for c in extra if isinstance(c, Range)), None)
        self.match: Match | None = next((c for c in extra if isinstance(c, Match)), None)
        self.printable = any(isinstance(c, Printable) for c in extra)
        code = next((c for c in extra if isinstance(c, Code)), None)
        self.code = code.code if code else None
        self.clip = any(isinstance(c, Clip) for c in extra)
        self.spread = any(isinstance(c, Spread) for c in extra)
        key = next((c for c in extra if isinstance(c, Key)), None)
        self.key = key.name if key else None

    def constraints(self) -> list[Any]:
        return [c for c in (self.length, self.rng, self.match) if c is not None] + (
            [Printable()] if self.printable else [])


_PARTS: dict[Any, _Parts] = {}


def _parts(tp: Any) -> _Parts:
    """``_Parts(tp)``, once per annotation (they are read, never changed)."""
    return _memo(_PARTS, tp, _Parts)


def _fail(path: str, why: str, code: str | None = None) -> typing.NoReturn:
    err = SchemaError(f"{path}: {why}" if path else why, code=code or "bad_message")
    err.default_code = code is None  # type: ignore[attr-defined]
    raise err


def _prefixed(e: SchemaError, path: str) -> SchemaError:
    """``e`` with ``path`` in front of the field it names (errors come up from nested parts)."""
    err = SchemaError(f"{path}.{e.message}" if path else e.message, code=e.code)
    err.default_code = getattr(e, "default_code", False)  # type: ignore[attr-defined]
    return err


def _utf8_len(x: str) -> int:
    try:
        return len(x.encode())
    except UnicodeEncodeError:  # lone surrogates: never valid text
        return -1


def clip_text(x: str, hi: int, utf8: bool = False) -> str:
    """``x`` cut to ``hi`` characters (or to at most ``hi`` UTF-8 bytes, whole characters)."""
    if not utf8:
        return x[:hi]
    if len(x) * 4 <= hi:
        return x
    return x.encode(errors="replace")[:hi].decode(errors="ignore")


def clip(tp: Any, text: str) -> str:
    """``text`` cut to the ``Len`` of annotation ``tp`` (a field's type alias), for a sender
    whose input may legitimately be longer (a file, a peer's words): the limit stays defined
    once, in the type."""
    length = _parts(tp).length
    if length is None:
        raise TypeError(f"{tp!r} has no Len to clip to")
    return clip_text(text, length.hi, length.utf8)


# --- the slow validators: complete, and the ones that name what is wrong ------------------


_COMPILED: dict[Any, Validator] = {}


def _memo(cache: dict[Any, Any], tp: Any, make: Callable[[Any], Any]) -> Any:
    """``make(tp)``, once per annotation: many fields of many classes share theirs, and
    what is made from it is code and closures in every process."""
    try:
        return cache[tp]
    except KeyError:
        made = cache[tp] = make(tp)
        return made
    except TypeError:  # an unhashable annotation: not shared
        return make(tp)


def _compile(tp: Any) -> Validator:
    """A validator ``(value, path) -> value`` for annotation ``tp``, one per annotation."""
    return _memo(_COMPILED, tp, _compile_new)


def _compile_new(tp: Any) -> Validator:
    p = _parts(tp)
    if p.code is not None:
        inner = _compile_parts(p)
        code = p.code

        def v_coded(x: Any, path: str) -> Any:
            try:
                return inner(x, path)
            except SchemaError as e:
                e.code = code
                e.default_code = False  # type: ignore[attr-defined]
                raise

        return v_coded
    return _compile_parts(p)


def _compile_parts(p: _Parts) -> Validator:
    tp, length, rng, match, printable = p.base, p.length, p.rng, p.match, p.printable
    origin = get_origin(tp)

    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only T | None unions are supported, got {tp}")
        cons = p.constraints()
        inner = _compile(typing.Annotated[args[0], *cons] if cons else args[0])

        def v_optional(x: Any, path: str) -> Any:
            return None if x is None else inner(x, path)

        return v_optional

    if origin is Literal:
        allowed = frozenset(get_args(tp))

        def v_literal(x: Any, path: str) -> Any:
            if type(x) not in (str, int) or x not in allowed:
                _fail(path, f"must be one of {sorted(map(str, allowed))}")
            return x

        return v_literal

    if origin in (tuple, list):
        args = get_args(tp)
        lo, hi = (length.lo, length.hi) if length else (0, DEFAULT_MAX_ITEMS)
        if (len(args) == 2 and args[1] is Ellipsis) or origin is list:
            item = _compile(args[0])

            def v_seq(x: Any, path: str) -> Any:
                if type(x) is not list and not isinstance(x, list | tuple):
                    _fail(path, "must be an array")
                if not lo <= len(x) <= hi:
                    _fail(path, f"must have {lo}..{hi} items")
                try:
                    return tuple([item(e, path) for e in x])
                except SchemaError:
                    for i, e in enumerate(x):  # which one: only once something failed
                        item(e, f"{path}[{i}]")
                    raise

            return v_seq
        items = [_compile(a) for a in args]
        n = len(items)

        def v_fixed(x: Any, path: str) -> Any:
            if type(x) is not list and not isinstance(x, list | tuple):
                _fail(path, "must be an array")
            if len(x) != n:
                _fail(path, f"must have {n} items")
            pairs = enumerate(zip(items, x, strict=True))
            return tuple([v(e, f"{path}[{i}]") for i, (v, e) in pairs])

        return v_fixed

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
        _build(tp)

        def v_record(x: Any, path: str) -> Any:
            if isinstance(x, tp):
                return x
            try:
                if tp.ARRAY:
                    if not isinstance(x, list | tuple):
                        _fail("", "must be an array")
                    return tp._decode_seq(x)
                if not isinstance(x, dict):
                    _fail("", "must be a map")
                return tp._decode_map(x)
            except SchemaError as e:
                raise _prefixed(tp._recode(e), path) from None

        return v_record

    if tp is str:
        lo, hi = (length.lo, length.hi) if length else (0, DEFAULT_MAX_STR)
        utf8 = bool(length and length.utf8)
        rx = re.compile(match.pattern) if match else None
        unit = "bytes of UTF-8" if utf8 else "characters"

        def v_str(x: Any, path: str) -> Any:
            if not isinstance(x, str):
                _fail(path, "must be a string")
            if not lo <= (_utf8_len(x) if utf8 else len(x)) <= hi:
                _fail(path, f"must be {lo}..{hi} {unit}")
            if rx is not None and rx.fullmatch(x) is None:
                _fail(path, "has the wrong format")
            if printable and not x.isprintable():
                _fail(path, "must be printable")
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
            try:
                x = float(x)
            except OverflowError:
                _fail(path, "must be a finite number")
            if not math.isfinite(x) or not lo_f <= x <= hi_f:
                _fail(path, f"must be a finite number in {lo_f}..{hi_f}")
            return x

        return v_float

    if tp is Any:
        return lambda x, path: x

    raise TypeError(f"unsupported annotation in a Record: {tp!r}")


# --- the fast path: each class's checks compiled into its constructor and decoders -------


class _Gen:
    """Source of one class's compiled functions, and the names they use."""

    def __init__(self) -> None:
        self.env: dict[str, Any] = {"_MISSING": MISSING, "_SchemaError": SchemaError,
                                    "_utf8_len": _utf8_len, "_clip_text": clip_text}
        self.n = 0

    def name(self, value: Any, prefix: str = "_c") -> str:
        self.n += 1
        key = f"{prefix}{self.n}"
        self.env[key] = value
        return key

    def checks(self, tp: Any, var: str, label: str, ind: str, *, ctor: bool) -> list[str]:
        """Lines that check ``var`` (annotation ``tp``), converting it where the type says;
        on failure they hand the value to the slow validator, which names the fault."""
        slow = self.name(_fast(tp), "_v")
        # The inline test only lets through what the validator accepts; anything else goes
        # to the validator, which converts (an int for a float) or names the fault.
        bad = f"{ind}    {var} = {slow}({var}, {label!r})"
        p = _parts(tp)
        base = p.base
        if get_origin(base) in (Union, types.UnionType):
            base = next(a for a in get_args(base) if a is not type(None))
        cond = self.simple(tp, var)
        lines: list[str] = []
        if ctor and p.clip and base is str and p.length is not None:
            hi, utf8 = p.length.hi, p.length.utf8
            measure = f"_utf8_len({var})" if utf8 else f"len({var})"
            lines.append(f"{ind}if type({var}) is str and {measure} > {hi}: "
                         f"{var} = _clip_text({var}, {hi}, {utf8})")
        if cond is None:  # containers and records: the validator converts too
            lines.append(f"{ind}{var} = {slow}({var}, {label!r})")
            return lines
        lines.append(f"{ind}if {cond}:")
        lines.append(bad)
        return lines

    def simple(self, tp: Any, var: str) -> str | None:
        """``_cond`` for annotation ``tp``, optional or not; None if not checked inline."""
        p = _parts(tp)
        base = p.base
        if get_origin(base) in (Union, types.UnionType):
            inner = next(a for a in get_args(base) if a is not type(None))
            cond = self._cond(inner, p, var)
            return None if cond is None else f"{var} is not None and ({cond})"
        return self._cond(base, p, var)

    def _cond(self, base: Any, p: _Parts, var: str) -> str | None:
        """An expression true when ``var`` is invalid, for types checked inline."""
        length, rng = p.length, p.rng
        if get_origin(base) is Literal:
            allowed = self.name(frozenset(get_args(base)))
            return f"type({var}) not in (str, int) or {var} not in {allowed}"
        if base is str:
            parts = [f"type({var}) is not str and not isinstance({var}, str)"]
            lo, hi = (length.lo, length.hi) if length else (0, DEFAULT_MAX_STR)
            measure = f"_utf8_len({var})" if length and length.utf8 else f"len({var})"
            parts.append(f"not {lo} <= {measure} <= {hi}")
            if p.match is not None:
                parts.append(f"{self.name(re.compile(p.match.pattern).fullmatch)}({var}) is None")
            if p.printable:
                parts.append(f"not {var}.isprintable()")
            return " or ".join(parts)
        if base is bytes:
            lo, hi = (length.lo, length.hi) if length else (0, DEFAULT_MAX_BYTES)
            return (f"type({var}) is not bytes and not isinstance({var}, bytes) "
                    f"or not {lo} <= len({var}) <= {hi}")
        if base is bool:
            return f"type({var}) is not bool"
        if base is int:
            lo, hi = (rng.lo, rng.hi) if rng else (INT64_MIN, UINT64_MAX)
            return (f"(type({var}) is not int and (not isinstance({var}, int) "
                    f"or isinstance({var}, bool))) or not {int(lo)} <= {var} <= {int(hi)}")
        if base is float:
            lo, hi = (rng.lo, rng.hi) if rng else (-math.inf, math.inf)
            finite = "" if rng else f" or {var} - {var} != 0"
            return (f"type({var}) is not float or not {self.name(float(lo))} <= {var} "
                    f"<= {self.name(float(hi))}{finite}")
        if base is Any:
            return "False"
        return None


_FAST: dict[Any, Validator] = {}


def _fast(tp: Any) -> Validator:
    """The validator of ``tp`` with its fast path, one per annotation."""
    return _memo(_FAST, tp, _make_fast)


def _make_fast(tp: Any) -> Validator:
    """The validator of ``tp``, with a compiled fast path for arrays of simple items (ids,
    ``[hops, signed, sig]`` entries): anything the fast path doubts goes to ``_compile``'s."""
    slow = _compile(tp)
    p = _parts(tp)
    base = p.base
    if get_origin(base) not in (tuple, list) or p.clip:
        return slow
    args = get_args(base)
    gen = _Gen()
    gen.env["_slow"] = slow
    is_seq = "type(x) is not list and type(x) is not tuple"
    if get_origin(base) is list or (len(args) == 2 and args[1] is Ellipsis):
        lo, hi = (p.length.lo, p.length.hi) if p.length else (0, DEFAULT_MAX_ITEMS)
        head = [" if " + is_seq + f" or not {lo} <= len(x) <= {hi}:", "  return _slow(x, path)"]
        cond = gen.simple(args[0], "e")
        if cond is not None:
            body = [" for e in x:", f"  if {cond}:", "   return _slow(x, path)",
                    " return x if type(x) is tuple else tuple(x)"]
        elif get_origin(_parts(args[0]).base) is tuple and Ellipsis not in get_args(
                _parts(args[0]).base):
            items = get_args(_parts(args[0]).base)
            names = [f"a{i}" for i in range(len(items))]
            conds = [gen.simple(a, n) for a, n in zip(items, names, strict=True)]
            if any(c is None for c in conds):
                return slow
            body = [" out = []", " add = out.append", " for e in x:",
                    "  if type(e) is not list and type(e) is not tuple or "
                    f"len(e) != {len(items)}:", "   return _slow(x, path)",
                    f"  {', '.join(names)}, = e",
                    "  if " + " or ".join(f"({c})" for c in conds) + ":",
                    "   return _slow(x, path)",
                    f"  add(e if type(e) is tuple else ({', '.join(names)},))",
                    " return tuple(out)"]
        else:
            return slow
        src = ["def v(x, path):", *head, *body]
    else:
        names = [f"a{i}" for i in range(len(args))]
        conds = [gen.simple(a, n) for a, n in zip(args, names, strict=True)]
        if any(c is None for c in conds):
            return slow
        src = ["def v(x, path):", " if " + is_seq + f" or len(x) != {len(args)}:",
               "  return _slow(x, path)", f" {', '.join(names)}, = x",
               " if " + " or ".join(f"({c})" for c in conds) + ":",
               "  return _slow(x, path)", " return x if type(x) is tuple else tuple(x)"]
    exec("\n".join(src), gen.env)  # our own generated source
    return typing.cast(Validator, gen.env["v"])


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    name: str
    default: Any = MISSING
    #: Its key in the map on the wire (the name, unless ``Key`` says otherwise).
    key: str = ""

    @property
    def required(self) -> bool:
        return self.default is MISSING


def fields(cls: type) -> tuple[Field, ...]:
    """The fields of a record class, in declaration order (bases first)."""
    _build(cls)  # type: ignore[arg-type]
    return cls.__record_fields__  # type: ignore[attr-defined]


_HINTS: dict[tuple[str, str], Any] = {}
_NAME = re.compile(r"[A-Za-z_]\w*")


def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls, include_extras=True)``, with each annotation string
    evaluated once per module: most fields share theirs (``Key32``, ``Detail``...), and
    evaluating them was most of the start-up cost of every service."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        ann = inspect.get_annotations(klass)
        if not ann:
            continue
        module = sys.modules.get(klass.__module__)
        globalns = module.__dict__ if module is not None else {}
        localns = dict(vars(klass))
        for name, value in ann.items():
            if isinstance(value, str):
                # a name the class itself defines may shadow the module's: not shared
                shared = not any(tok in localns for tok in _NAME.findall(value))
                key = (klass.__module__, value)
                if shared and key in _HINTS:
                    value = _HINTS[key]
                else:
                    evaluated = eval(value, globalns, localns)  # our own source
                    if shared:
                        _HINTS[key] = evaluated
                    value = evaluated
            hints[name] = value
    return hints


def _build(cls: type[Record]) -> None:
    """Settle ``cls``'s fields (their wire keys) once; its functions are compiled one at a
    time, each on its first use (``_compile_part``): a process that only decodes a class
    never holds its constructor's or encoder's code."""
    if cls.__dict__.get("_built"):
        return
    if cls in (Record, ArrayRecord):
        raise TypeError(f"{cls.__name__} is a base: make a record of a subclass")
    hints = _type_hints(cls)
    cls.__record_fields__ = tuple(
        dataclasses.replace(f, key=_parts(hints[f.name]).key or f.name)
        for f in cls.__record_fields__)
    cls.__record_hints__ = hints  # type: ignore[attr-defined]
    if cls.ARRAY:  # a required field after a default cannot be built positionally
        seen_default = False
        for f in cls.__record_fields__:
            if f.required and seen_default:
                raise TypeError(f"{cls.__name__}.{f.name}: a required field after a default")
            seen_default = seen_default or not f.required
    cls._built = True


def _decoder_checks(cls: type[Record], gen: _Gen) -> list[str]:
    """Lines that check a decoded map (or array) ``d`` and name its values x0, x1..."""
    flds, hints = cls.__record_fields__, cls.__record_hints__  # type: ignore[attr-defined]
    checks: list[str] = []
    if cls.ARRAY:
        checks += _array_head(cls, flds, hints, gen)
    for i, f in enumerate(flds):
        var = f"x{i}"
        if cls.ARRAY:
            checks += gen.checks(hints[f.name], var, f.name, "    ", ctor=False)
            continue
        checks.append(f"    {var} = d.get({f.key!r}, _MISSING)")
        checks.append(f"    if {var} is _MISSING:")
        if f.required:
            checks.append(f"        raise _missing({f.name!r})")
        else:
            checks.append(f"        {var} = {gen.name(f.default, '_d')}")
        checks.append("    else:")
        checks += gen.checks(hints[f.name], var, f.name, "        ", ctor=False)
    return checks


def _compile_part(cls: type[Record], part: str) -> None:
    """Compile one of ``cls``'s functions: ``init`` (the validating constructor),
    ``decode`` (from a decoded map or array, no clipping), ``values`` (the same checks,
    the values alone: a hot path that needs no record) or ``wire`` (the encoder)."""
    _build(cls)
    flds, hints = cls.__record_fields__, cls.__record_hints__  # type: ignore[attr-defined]
    gen = _Gen()
    gen.env["_cls"] = cls
    gen.env["_new"] = object.__new__
    gen.env["_missing"] = lambda name: _missing(name)
    names = [f.name for f in flds]
    if part == "init":
        params = [f.name if f.required else f"{f.name}={gen.name(f.default, '_d')}"
                  for f in flds]
        sig = ", ".join(params) if cls.ARRAY else ("*, " + ", ".join(params) if params else "")
        body: list[str] = []
        for f in flds:
            body += gen.checks(hints[f.name], f.name, f.name, "    ", ctor=True)
        body.append("    d = self.__dict__")
        body += [f"    d[{n!r}] = {n}" for n in names]
        src = [f"def __init__(self{', ' if sig else ''}{sig}):", *body]
    elif part == "decode":
        src = ["def _decode(d):", *_decoder_checks(cls, gen), "    o = _new(_cls)",
               "    od = o.__dict__"]
        src += [f"    od[{f.name!r}] = x{i}" for i, f in enumerate(flds)]
        src.append("    return o")
    elif part == "values":
        src = ["def _values(d):", *_decoder_checks(cls, gen),
               f"    return ({''.join(f'x{i}, ' for i in range(len(flds)))})"]
    else:  # encoder: nested records become maps or arrays, tuples pack as arrays already
        src = ["def _wire(self):", "    d = self.__dict__"]
        items = []
        for f in flds:
            conv = _wire_conv(hints[f.name], f"d[{f.name!r}]", gen)
            items.append(conv if cls.ARRAY else f"{f.key!r}: {conv}")
        if cls.ARRAY:
            tag = [gen.name(cls.TAG, "_t")] if cls.TAG is not MISSING else []
            if flds and _parts(hints[flds[-1].name]).spread:
                *head, last = items
                src.append(f"    return [{''.join(x + ', ' for x in tag + head)}*{last}]")
            else:
                src.append(f"    return [{', '.join(tag + items)}]")
        else:
            src.append(f"    return {{{', '.join(items)}}}")
    exec("\n".join(src), gen.env)  # our own generated source, like dataclasses
    if part == "init":
        cls.__init__ = gen.env["__init__"]  # type: ignore[method-assign]
        cls.__init__.__qualname__ = f"{cls.__qualname__}.__init__"
    elif part == "decode":
        if cls.ARRAY:
            cls._decode_seq = staticmethod(gen.env["_decode"])  # type: ignore[assignment]
        else:
            cls._decode_map = staticmethod(gen.env["_decode"])  # type: ignore[assignment]
    elif part == "values":
        cls._values_of = staticmethod(gen.env["_values"])  # type: ignore[attr-defined]
    else:
        cls._wire = gen.env["_wire"]  # type: ignore[method-assign]


def _missing(name: str) -> SchemaError:
    err = SchemaError(f"{name}: is missing", code="bad_message")
    err.default_code = True  # type: ignore[attr-defined]
    return err


def _array_head(cls: type[Record], flds: tuple[Field, ...], hints: dict[str, Any],
                gen: _Gen) -> list[str]:
    """Lines that check an array's type, length and tag, and name its elements x0, x1..."""
    tagged = cls.TAG is not MISSING
    first = 1 if tagged else 0
    spread = bool(flds) and _parts(hints[flds[-1].name]).spread
    fixed = len(flds) - (1 if spread else 0)
    lines = ["    if type(d) is not list and type(d) is not tuple:",
             "        raise _bad_shape('must be an array')"]
    if spread:
        lines += [f"    if len(d) < {first + fixed}:",
                  f"        raise _bad_shape('must have at least {first + fixed} items')"]
    else:
        lines += [f"    if len(d) != {first + fixed}:",
                  f"        raise _bad_shape('must have {first + fixed} items')"]
    if tagged:
        tag = gen.name(cls.TAG, "_t")
        gen.env["_bad_tag"] = lambda got: _shape_error(
            f"must start with {cls.TAG!r}, not {got!r}", cls.TAG_CODE)
        lines += [f"    if type(d[0]) is not type({tag}) or d[0] != {tag}:",
                  "        raise _bad_tag(d[0])"]
    for i in range(fixed):
        lines.append(f"    x{i} = d[{first + i}]")
    if spread:
        lines.append(f"    x{fixed} = d[{first + fixed}:]")
    gen.env["_bad_shape"] = lambda why: _shape_error(why)
    return lines


def _shape_error(why: str, code: str | None = None) -> SchemaError:
    err = SchemaError(why, code=code or "bad_message")
    err.default_code = code is None  # type: ignore[attr-defined]
    return err


def _wire_conv(tp: Any, expr: str, gen: _Gen) -> str:
    """An expression for the wire form of ``expr`` (annotation ``tp``)."""
    base = _parts(tp).base
    optional = False
    if get_origin(base) in (Union, types.UnionType):
        base = next(a for a in get_args(base) if a is not type(None))
        optional = True
    if isinstance(base, type) and issubclass(base, Record):
        conv = f"{expr}._wire()"
    elif get_origin(base) in (tuple, list, dict) and _has_record(base):
        conv = f"{gen.name(_plain)}({expr})"
    else:
        return expr
    return f"(None if {expr} is None else {conv})" if optional else conv


def _has_record(tp: Any) -> bool:
    tp = _parts(tp).base
    if isinstance(tp, type) and issubclass(tp, Record):
        return True
    return any(_has_record(a) for a in get_args(tp) if a is not Ellipsis)


class FrozenInstanceError(AttributeError):
    """A record's fields cannot be changed."""


class Record:
    """Base of every map-shaped message: frozen, built from keyword arguments only.

    ``record`` makes a class a record without ``dataclasses``: every process
    imports about a hundred message types at start, and dataclasses' generated
    methods cost more start-up time than anything else (bench/discovery_time.py).
    """

    __record_fields__: ClassVar[tuple[Field, ...]] = ()
    #: The reject code of a field that does not match (unless its constraint names one).
    CODE: ClassVar[str] = "bad_message"
    #: An array record's first element (its type, or version), or MISSING for none.
    TAG: ClassVar[Any] = MISSING
    #: The reject code of an array whose first element is not ``TAG`` (else ``CODE``).
    TAG_CODE: ClassVar[str | None] = None
    ARRAY: ClassVar[bool] = False
    _built: ClassVar[bool] = False

    # Until ``_build`` replaces them for a class, these compile it and call on.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _lazy_init(self, *args, **kwargs)

    _decode_map = classmethod(lambda cls, data: _lazy_decode_map(cls, data))
    _decode_seq = classmethod(lambda cls, data: _lazy_decode_seq(cls, data))

    def _wire(self) -> Any:
        return _lazy_wire(self)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def replace(self, **changes: Any) -> typing.Self:
        """A copy with some fields changed, checked like any new record."""
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
    def _recode(cls, e: SchemaError) -> SchemaError:
        """Give an error without a code of its own this record's ``CODE``."""
        if getattr(e, "default_code", False) and cls.CODE != "bad_message":
            e.code = cls.CODE
            e.default_code = False  # type: ignore[attr-defined]
        return e

    @classmethod
    def values_of(cls, data: Any) -> tuple[Any, ...]:
        """The field values of a decoded map (array for an ``ArrayRecord``), checked exactly
        as ``from_dict`` checks them, without building the record (for hot paths)."""
        _build(cls)
        try:
            if not isinstance(data, list | tuple if cls.ARRAY else dict):
                _fail(cls.__name__, "must be an array" if cls.ARRAY else "must be a map")
            return cls._values_of(data)  # type: ignore[attr-defined]
        except SchemaError as e:
            raise cls._recode(e) from None

    @classmethod
    def from_dict(cls, data: Any) -> typing.Self:
        """Validate a decoded map and build the record; raises ``SchemaError``."""
        try:
            if type(data) is not dict and not isinstance(data, dict):
                _fail(cls.__name__, "must be a map")
            return cls._decode_map(data)  # compiled on first use
        except SchemaError as e:
            raise cls._recode(e) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of fields (nested records become dicts), ready for msgpack."""
        return self._wire()


class ArrayRecord(Record):
    """Base of every array-shaped message: ``[TAG, field, ...]`` on the wire (no ``TAG``:
    ``[field, ...]``), built from positional or keyword arguments in field order."""

    ARRAY: ClassVar[bool] = True

    @classmethod
    def from_array(cls, data: Any) -> typing.Self:
        """Validate a decoded array and build the record; raises ``SchemaError``."""
        try:
            return cls._decode_seq(data)  # compiled on first use
        except SchemaError as e:
            raise cls._recode(e) from None

    def to_array(self) -> list[Any]:
        """The array on the wire (nested records become maps or arrays)."""
        return self._wire()


def _plain(x: Any) -> Any:
    if isinstance(x, Record):
        return x._wire()
    if isinstance(x, tuple | list):
        return [_plain(e) for e in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def record(cls: type) -> type:
    """Make ``cls`` a record: its annotated fields (after its bases'), defaults from the
    class body, a checking constructor, equality, hashing and immutability."""
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
            found[name] = Field(name=name, default=default, key=name)
    cls.__record_fields__ = tuple(found.values())
    # compiled on first use (_build); until then these compile and call on
    cls.__init__ = _lazy_init
    cls._decode_map = classmethod(_lazy_decode_map)
    cls._decode_seq = classmethod(_lazy_decode_seq)
    cls._values_of = classmethod(_lazy_values_of)
    cls._wire = _lazy_wire
    cls._built = False
    return cls


def _lazy_init(self: Record, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    _compile_part(cls, "init")
    cls.__init__(self, *args, **kwargs)  # type: ignore[misc]


def _lazy_decode_map(cls: type[Record], data: dict[Any, Any]) -> Any:
    _compile_part(cls, "decode")
    return cls._decode_map(data)


def _lazy_decode_seq(cls: type[Record], data: list[Any]) -> Any:
    _compile_part(cls, "decode")
    return cls._decode_seq(data)


def _lazy_values_of(cls: type[Record], data: Any) -> Any:
    if getattr(cls, "FAST_VALUES", False):
        _compile_part(cls, "values")
        return cls._values_of(data)  # type: ignore[attr-defined]
    decoded = cls._decode_seq(data) if cls.ARRAY else cls._decode_map(data)
    return tuple(decoded.__dict__[f.name] for f in cls.__record_fields__)


def _lazy_wire(self: Record) -> Any:
    _compile_part(type(self), "wire")
    return self._wire()


def registry(table: dict[Any, type], key_attr: str, *attrs: str,
             check: Callable[[Any], None] | None = None,
             **defaults: Any) -> Callable[..., Callable[[type], type]]:
    """The one registering decorator: ``registry(EVENTS, "TOPIC", "V", V=1)`` returns
    ``event(topic, v=1)``, which makes a class a record, sets ``TOPIC`` and ``V`` on it and
    enters it in ``EVENTS`` under ``topic`` (a key defined twice is an error)."""

    def declare(key: Any, *values: Any, **named: Any) -> Callable[[type], type]:
        if len(values) > len(attrs):
            raise TypeError(f"at most {len(attrs)} settings after the key")
        settings = {**defaults, **dict(zip(attrs, values, strict=False)), **named}

        def wrap(cls: type) -> type:
            if key in table:
                raise TypeError(f"{key_attr} {key!r} defined twice")
            if check is not None:
                check(key)
            setattr(cls, key_attr, key)
            for name, value in settings.items():
                setattr(cls, name, value)
            made = record(cls)
            table[key] = made
            return made

        return wrap

    return declare


def to_jsonable(x: Any) -> Any:
    """Convert a decoded message to JSON-friendly values (bytes become hex)."""
    if isinstance(x, Record):
        x = x._wire()
    if isinstance(x, bytes):
        return x.hex()
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(e) for e in x]
    return x
