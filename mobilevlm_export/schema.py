"""Typed configuration: the enums recipes and device profiles use, and one validating reader of TOML and JSON tables
into frozen dataclasses (unknown keys, wrong types, out-of-range numbers and unknown enum values are a ``UserError``
naming the file and key). Torch-free.
"""

from __future__ import annotations

import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.files import open_regular, present

# The artifact side runs on the Python its device ships: 3.10 on JetPack 6 (TensorRT's bindings are built for it),
# 3.12 on JetPack 7. ``StrEnum`` and ``tomllib`` are 3.11+: on 3.10, an equivalent ``StrEnum`` and the ``tomli``
# package (the same parser, a dependency on 3.10 only). Import them from here, not from ``enum``/``tomllib``.
if sys.version_info >= (3, 11):
    import tomllib
    from enum import StrEnum
else:
    import tomli as tomllib

    class StrEnum(str, Enum):
        """Python 3.11's ``enum.StrEnum``: members are ``str`` and compare equal to their values, ``str()`` and
        ``format()`` give the value, ``auto()`` gives the lower-cased member name."""

        def __new__(cls, *values):
            if not 1 <= len(values) <= 3 or not all(isinstance(v, str) for v in values):
                raise TypeError(f"{values!r}: a StrEnum member's value is str() of up to 3 str arguments")
            value = str(*values)
            member = str.__new__(cls, value)
            member._value_ = value
            return member

        __str__ = str.__str__
        __format__ = str.__format__

        @staticmethod
        def _generate_next_value_(name, start, count, last_values):
            return name.lower()


class Precision(StrEnum):
    """How a graph part's weights (and activations) are stored and computed."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"    # weight-only int8, per output channel (or per row for an embedding)
    INT4 = "int4"    # weight-only int4 in groups along the input dim
    W8A8 = "w8a8"    # int8 weights per channel, int8 activations with calibrated per-tensor scales
    DA8W4 = "8da4w"  # int8 dynamic per-token activations, int4 grouped weights
    DA8W8 = "8da8w"  # int8 dynamic per-token activations, int8 per-channel weights

    def weight_bytes(self, group_size: int | None) -> float:
        """Bytes per weight as stored: the integer payload plus a 2-byte scale per group of grouped int4."""
        if self in (Precision.INT4, Precision.DA8W4):
            return 0.5 + (2.0 / group_size if group_size else 0.0)
        return {Precision.FP32: 4.0, Precision.FP16: 2.0}.get(self, 1.0)


class QuantAlgorithm(StrEnum):
    """How quantization parameters are chosen."""

    RTN = "rtn"                  # round to nearest with min/max (absmax) scales
    HQQ = "hqq"                  # half-quadratic scale search, scale only (torchao's hqq_scale_only)
    AWQ = "awq"                  # activation-aware per-input-channel pre-scales, searched on calibration data
    SMOOTHQUANT = "smoothquant"  # activation outliers migrated into the weights, calibrated


def bounded(default=MISSING, *, min: float | None = None, max: float | None = None,  # noqa: A002
            power_of_two: bool = False):
    """A dataclass field whose value the reader checks against ``[min, max]`` (and power of two)."""
    meta = {"min": min, "max": max, "power_of_two": power_of_two}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class QuantSpec:
    """How one part is quantized (a recipe's ``[quantize.PART]``). ``group_size`` None: the target's default."""

    scheme: Precision = Precision.FP32
    group_size: int | None = bounded(None, min=16, power_of_two=True)
    algorithm: QuantAlgorithm = QuantAlgorithm.RTN


def _choices(enum: type[Enum]) -> str:
    return ", ".join(str(m.value) for m in enum)


def _coerce(value, tp, key: str, bad, meta):
    """``value`` read from TOML or JSON as type ``tp`` (JSON's null is ``None`` where ``tp`` admits it);
    ``bad(key, why)`` makes the error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, arms[0], key, bad, meta)
    if origin is tuple:
        if not isinstance(value, list):
            raise bad(key, "must be a list")
        return tuple(_coerce(v, typing.get_args(tp)[0], key, bad, meta) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad(key, "must be a table")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise bad(key, f"is {value!r}; known: {_choices(tp)}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad(key, f"is {value!r}; must be true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad(key, f"is {value!r}; must be a string")
        return value
    if tp in (int, float):
        ok = isinstance(value, int) if tp is int else isinstance(value, int | float)
        if not ok or isinstance(value, bool) or (tp is float and not _finite(value)):
            raise bad(key, f"is {value!r}; must be {'an integer' if tp is int else 'a finite number'}")
        lo, hi = (meta or {}).get("min"), (meta or {}).get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
            raise bad(key, f"is {value!r}; must be {span}")
        if (meta or {}).get("power_of_two") and value & (value - 1):
            raise bad(key, f"is {value!r}; must be a power of two")
        return tp(value)
    raise TypeError(f"schema: unsupported field type {tp!r} for {key}")  # a bug in a dataclass, not bad input


def _finite(value: int | float) -> bool:
    """Whether ``value`` is a finite float (an integer too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def parse_table(cls: type, table, prefix: str, bad, allow_unknown: bool = False):
    """An instance of the frozen dataclass ``cls`` from a TOML or JSON ``table``; every key checked
    (``bad(key, why)`` makes the ``UserError``; keys are named ``prefix.key``, or ``key`` when ``prefix`` is empty).
    Fields without a default are required. ``allow_unknown``: keys ``cls`` does not name are ignored (a file other
    tools read too, such as a Hugging Face ``config.json``) instead of an error."""
    if not isinstance(table, dict):
        raise bad(prefix, "must be a table")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    for key in table:
        if key not in known and not allow_unknown:
            raise bad(_key(prefix, key), f"is unknown (known: {', '.join(known)})")
    values = {}
    for f in fields(cls):
        if not f.init:
            continue
        if f.name not in table:
            if f.default is MISSING and f.default_factory is MISSING:
                raise bad(_key(prefix, f.name), "is missing")
            continue
        values[f.name] = _coerce(table[f.name], hints[f.name], _key(prefix, f.name), bad, f.metadata)
    return cls(**values)


def to_table(obj) -> dict:
    """The TOML-form dict of a dataclass read by ``parse_table`` (enums as their values, ``None`` left out)."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None or not f.init:
            continue
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = [v.value if isinstance(v, Enum) else v for v in value]
        out[f.name] = value
    return out


@dataclass(frozen=True)
class Where:
    """Names the file a table came from in error messages."""

    source: str

    def bad(self, key: str, why: str) -> UserError:
        return UserError(f"{self.source}: key '{key}' {why}")


def shipped_dir(name: str) -> Path:
    """A data folder shipped beside the code (``recipes``, ``device_profiles``). In a wheel it is package data,
    ``mobilevlm_export/_data/NAME`` (``pyproject.toml`` maps it from the repository's top-level ``NAME/``); in a
    checkout (an editable install, the tests) it is that top-level folder itself, so an edit there is seen at once."""
    package = Path(__file__).resolve().parent
    packaged = package / "_data" / name
    return packaged if packaged.is_dir() else package.parent / name


def read_named_toml(name_or_path: str | Path, directory: Path, flag: str, kind: str) -> tuple[Path, dict]:
    """A TOML data file by name (``directory/NAME.toml``) or path, and its parsed contents. ``UserError`` names
    the flag (``--recipe``) when there is no such file, the file when it is not valid TOML."""
    path = Path(name_or_path)
    if not path.suffix:
        path = directory / f"{name_or_path}.toml"
    if not present(path):
        known = ", ".join(sorted(p.stem for p in directory.glob("*.toml")))
        raise UserError(f"{flag} {name_or_path}: no such {kind} (known: {known})")
    try:
        with open_regular(path, flag) as f:  # a FIFO or device is refused, never read
            return path, tomllib.loads(f.read().decode())
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None


def read_json(path: Path) -> object:
    """The parsed contents of the JSON file ``path``; ``UserError`` naming the file when it cannot be read or is not
    JSON (``NaN`` and ``Infinity`` literals are read as floats: the callers' number checks reject them)."""
    try:
        with open_regular(path) as f:  # a FIFO or device is refused, never read
            return json.loads(f.read())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise UserError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------------------------
# JSON records (the manifest, golden e2e pairs): declarative specs checked by one walker


@dataclass(frozen=True)
class Kind:
    """A leaf of a spec: a value fits when ``test(value)``; ``what`` completes "must be ..."."""

    test: Callable[[object], bool]
    what: str


@dataclass(frozen=True)
class Each:
    """A non-empty JSON list (``container=list``) or object (``container=dict``) whose every value fits ``spec``."""

    spec: object
    container: type = list


def is_int(value) -> bool:
    """An integer, and not a bool (JSON's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An integer or a float, and not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


STR = Kind(lambda v: isinstance(v, str), "a string")
BOOL = Kind(lambda v: isinstance(v, bool), "true or false")
INT = Kind(is_int, "an integer")
COUNT = Kind(lambda v: is_int(v) and v >= 0, "an integer >= 0")
NUMBER = Kind(is_number, "a number")
RGB = Kind(lambda v: isinstance(v, list) and len(v) == 3 and all(map(is_number, v)), "a list of 3 numbers")
OBJECT = Kind(lambda v: isinstance(v, dict), "an object")
SHA256 = Kind(lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
              "64 lowercase hex digits")


def check_spec(value, spec, source: str, key: str = "") -> None:
    """``UserError`` (``source: key why``) unless ``value`` fits ``spec``: a ``Kind``, an ``Each``, or a dict of
    named fields' specs (a name ending in ``?`` may be absent; fields not named are not checked)."""
    where = key or "the top level"
    if isinstance(spec, Kind):
        if not spec.test(value):
            raise UserError(f"{source}: {where} must be {spec.what} (is {short_json(value)})")
    elif isinstance(spec, Each):
        if not isinstance(value, spec.container) or not value:
            kind = "list" if spec.container is list else "object"
            raise UserError(f"{source}: {where} must be a non-empty {kind} (is {short_json(value)})")
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            check_spec(v, spec.spec, source, item_key(key, k))
    elif not isinstance(value, dict):
        raise UserError(f"{source}: {where} must be an object (is {short_json(value)})")
    else:
        for name, sub in spec.items():
            member = name.removesuffix("?")
            sub_key = item_key(key, member)
            if member in value:
                check_spec(value[member], sub, source, sub_key)
            elif not name.endswith("?"):
                raise UserError(f"{source}: {sub_key} is missing")


def item_key(parent: str, k: str | int) -> str:
    """``graphs.decoder`` (an object's field), ``artifacts[3]`` (a list's item)."""
    return f"{parent}[{k}]" if isinstance(k, int) else f"{parent}.{k}" if parent else k


def short_json(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
