"""Stage configuration: one typed class per stage, whose fields say whether they change results.

Each stage's options are a dataclass derived from :class:`StageConfig`. Every field is declared with
:func:`result` (it changes what the stage produces, so it enters the artifact's config hash) or
:func:`runtime` (it changes only how the stage runs: device, workers, resume, logging; never
hashed). The help text of an option lives in its field, and so does its default: the command line
reads both from here, so there is no second copy to drift.

:func:`result_config` is the one place that decides what a run records and hashes: the stage name
and its config version, every result field, and what the stage resolved from them (a model's
hyperparameters after the overrides, for instance). A stage whose config grows bumps ``VERSION``,
so older artifacts are rebuilt rather than silently matched.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from udaseg.errors import UdasegError

RESULT = "result"
RUNTIME = "runtime"

# panels of ``--help``: options that change results, apart from the runtime-only ones
RESULT_PANEL = "Options that change results"
RUNTIME_PANEL = "Runtime options (results unchanged)"


def result(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: Any = None,
    argument: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """A field that changes the stage's results (part of the config hash). ``argument``: on the
    command line it is the command's positional argument instead of an option. ``low``/``high``:
    inclusive bounds of a number (checked when the config is built)."""
    return _field(RESULT, default, help, factory, argument, low, high)


def runtime(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: Any = None,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """A field that changes only how the stage runs, never its results (not hashed)."""
    return _field(RUNTIME, default, help, factory, False, low, high)


def _field(kind, default, help, factory, argument, low, high) -> Any:
    metadata = {"kind": kind, "help": help, "argument": argument, "low": low, "high": high}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class StageConfig:
    """Base of every stage's config. ``STAGE`` is the name its manifests record, ``COMMAND`` the
    words after ``udaseg`` that run it, ``VERSION`` the version of the config's meaning.

    Fields typed ``Path`` (or ``Path | None``, ``list[Path]``) accept text too: it is turned into
    paths here, so a config built from a pipeline file or a test holds the same values as one
    built by the command line. A subclass with its own ``__post_init__`` calls this one first.
    """

    STAGE: ClassVar[str] = ""
    COMMAND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        shapes = field_shapes(type(self))
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            _check_bounds(item, value)
            shape = shapes[item.name]
            if shape.item is not Path:
                continue
            if shape.kind == "value" and isinstance(value, str):
                setattr(self, item.name, Path(value))
            elif shape.kind == "list" and isinstance(value, list | tuple):
                setattr(self, item.name, [Path(v) for v in value])


def _check_bounds(item: dataclasses.Field, value: Any) -> None:
    """Refuse a number outside the field's ``low``/``high``, naming the option."""
    low, high = item.metadata.get("low"), item.metadata.get("high")
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if (low is not None and value < low) or (high is not None and value > high):
        span = (
            f">= {low:g}"
            if high is None
            else f"<= {high:g}"
            if low is None
            else (f"between {low:g} and {high:g}")
        )
        raise UdasegError(
            f"{option_flag(item.name)} {value:g} is out of range: it must be {span}", exit_code=2
        )


def config_fields(cls: type[StageConfig] | StageConfig) -> Iterator[dataclasses.Field]:
    """The declared fields of a stage config, each with its ``kind`` and ``help``."""
    for item in dataclasses.fields(cls):
        if item.metadata.get("kind") not in (RESULT, RUNTIME):
            name = cls.__name__ if isinstance(cls, type) else type(cls).__name__
            raise TypeError(f"{name}.{item.name} is declared without config.result/runtime")
        yield item


def field_of(cls: type[StageConfig], name: str) -> dataclasses.Field:
    for item in config_fields(cls):
        if item.name == name:
            return item
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def default(cls: type[StageConfig], name: str) -> Any:
    """The default of one field (a fresh copy for list and dict defaults)."""
    item = field_of(cls, name)
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    if item.default is dataclasses.MISSING:
        raise KeyError(f"{cls.__name__}.{name} has no default: it is required")
    return item.default


def help_of(cls: type[StageConfig], name: str) -> str:
    return field_of(cls, name).metadata["help"]


def is_result(cls: type[StageConfig], name: str) -> bool:
    return field_of(cls, name).metadata["kind"] == RESULT


@functools.cache
def field_types(cls: type[StageConfig]) -> dict[str, Any]:
    """Each field's annotation as a type (the classes use postponed annotations)."""
    return typing.get_type_hints(cls)


@dataclasses.dataclass(frozen=True)
class Shape:
    """How a field is written on a command line. ``kind``: ``switch`` (``--x/--no-x``),
    ``pairs`` (a dict, as repeated ``key=value``), ``list`` (a repeated option, each an ``item``)
    or ``value`` (one ``item``: int, float, str or Path). ``optional``: the field may be None."""

    kind: str
    item: Any
    optional: bool


@functools.cache
def field_shapes(cls: type[StageConfig]) -> dict[str, Shape]:
    """The :class:`Shape` of every field of ``cls``: the one reading of its annotations that the
    command line, the pipeline parser and the configs themselves share."""
    types = field_types(cls)
    shapes = {}
    for item in dataclasses.fields(cls):
        inner, optional = optional_inner(types[item.name])
        origin = typing.get_origin(inner)
        if inner is bool:
            shapes[item.name] = Shape("switch", bool, optional)
        elif origin is dict:
            shapes[item.name] = Shape("pairs", dict, optional)
        elif origin is list:
            shapes[item.name] = Shape("list", typing.get_args(inner)[0], optional)
        else:
            shapes[item.name] = Shape("value", inner, optional)
    return shapes


def plain(value: Any) -> Any:
    """A JSON-ready copy of a config value: paths become absolute strings, tuples lists."""
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def result_config(config: StageConfig, **resolved: Any) -> dict[str, Any]:
    """What a run records in its manifest and hashes: ``stage``, ``version``, every result field,
    then ``resolved`` (values the stage derived from them, which win over a field of that name)."""
    data: dict[str, Any] = {"stage": config.STAGE, "version": config.VERSION}
    for item in config_fields(config):
        if item.metadata["kind"] == RESULT:
            data[item.name] = plain(getattr(config, item.name))
    data.update({k: plain(v) for k, v in resolved.items()})
    return data


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data always gives equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=json_default)


def config_hash(data: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a recorded config (see :func:`result_config`)."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__} in a config")


def optional_inner(annotation: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(annotation, False)``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(annotation)):
            return args[0], True
    return annotation, False


def option_flag(name: str) -> str:
    """The command-line spelling of a config field: the ``hparams`` and ``overrides`` dicts are
    ``--set key=value``, every other field ``--field-name``."""
    return "--set" if name in SET_FIELDS else "--" + name.replace("_", "-")


# dict fields given as repeated ``--set key=value`` (hyperparameters; a manifest's keys)
SET_FIELDS = ("hparams", "overrides")


def parse_kv(items: list[str] | None, option: str) -> dict[str, Any]:
    """``["a=1", "b=x,y"]`` -> ``{"a": 1, "b": "x,y"}``: values are read as YAML scalars.

    Raises:
        UdasegError: naming ``option`` for an item without ``=``.
    """
    import yaml

    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UdasegError(f'{option} "{item}" must look like key=value', exit_code=2)
        parsed[key] = _exponent_number(yaml.safe_load(value))
    return parsed


def _exponent_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (an exponent without a dot) as text; people mean the number."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        return float(value)
    if isinstance(value, list):
        return [_exponent_number(v) for v in value]
    return value
