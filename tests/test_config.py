"""Stage configs: what enters the config hash, and one source for every option's default.

Parametrised over every stage of :data:`udaseg.stages.STAGES`, so a new stage (or a new field)
is checked without a new test.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from udaseg import config as cfg
from udaseg.config.values import parse_ints
from udaseg.stages import STAGES

# values a field must hold to build a valid config where its type alone does not say
VALID = {
    "shard": ("0/2", "1/2"),
    "stride": ("0.5", "0.25"),
    "metric": ("dice", "dice,hd95"),
    "label_values": ("dataset-codes", "class-ids"),
    "pred_values": ("class-ids", "dataset-codes"),
}


def _value(name: str, annotation, current, item=None):
    """A valid value for field ``name`` that differs from ``current`` (within its bounds)."""
    value = _candidate(name, annotation, current)
    low = item.metadata.get("low") if item else None
    high = item.metadata.get("high") if item else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if high is not None and value > high:
            value = type(value)(low if low is not None and low != current else (high + low) / 2)
        if low is not None and value < low:
            value = type(value)(low)
    return value


def _candidate(name: str, annotation, current):
    if name in VALID:
        first, second = VALID[name]
        return second if current is not None and str(current) in (first, str(first)) else first
    inner, _ = cfg.optional_inner(annotation)
    origin = typing.get_origin(inner)
    if inner is bool:
        return not current
    if inner is int:
        return (current or 0) + 1
    if inner is float:
        return (current or 0.0) + 0.25
    if inner is Path:
        return Path("/tmp/elsewhere") if current != Path("/tmp/elsewhere") else Path("/tmp/x")
    if origin is list:
        element = typing.get_args(inner)[0]
        return [*(current or []), Path("/tmp/more") if element is Path else "more"]
    if origin is dict:
        return {**(current or {}), "steps": 7}
    return f"{current}-other" if current is not None else "other"


def _example(cls):
    """An instance with every required field given."""
    types = cfg.field_types(cls)
    required = {
        f.name: _value(f.name, types[f.name], None)
        for f in cfg.config_fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return cls(**required)


CASES = [
    pytest.param(entry.config_class, item.name, id=f"{entry.command}:{item.name}")
    for entry in STAGES.values()
    for item in cfg.config_fields(entry.config_class)
]


@pytest.mark.parametrize(("cls", "name"), CASES)
def test_a_result_field_changes_the_hash_and_a_runtime_field_does_not(cls, name):
    base = _example(cls)
    item = cfg.field_of(cls, name)
    value = _value(name, cfg.field_types(cls)[name], getattr(base, name), item)
    assert value != getattr(base, name)
    changed = dataclasses.replace(base, **{name: value})
    before = cfg.config_hash(cfg.result_config(base))
    after = cfg.config_hash(cfg.result_config(changed))
    if cfg.is_result(cls, name):
        assert before != after, f"{cls.__name__}.{name} changes results but not the hash"
    else:
        assert before == after, f"{cls.__name__}.{name} is runtime-only but changes the hash"


@pytest.mark.parametrize("entry", list(STAGES.values()), ids=lambda e: e.command)
def test_every_stage_config_names_its_stage_and_command(entry):
    cls = entry.config_class
    assert cls.STAGE and entry.command == cls.COMMAND
    assert issubclass(cls, cfg.StageConfig)
    recorded = cfg.result_config(_example(cls))
    assert recorded["stage"] == cls.STAGE and recorded["version"] == cls.VERSION


def test_the_config_version_is_part_of_the_hash():
    cls = STAGES["predict"].config_class
    config = _example(cls)
    bumped = type("Bumped", (cls,), {"VERSION": cls.VERSION + 1})
    later = bumped(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    assert cfg.config_hash(cfg.result_config(config)) != cfg.config_hash(cfg.result_config(later))


def test_resolved_values_are_recorded_and_win_over_the_field():
    cls = STAGES["segment-train"].config_class
    config = cls(source=Path("/tmp/s"), hparams={"steps": 3})
    recorded = cfg.result_config(config, hparams={"steps": 3, "lr": 0.1})
    assert recorded["hparams"] == {"steps": 3, "lr": 0.1}
    assert recorded["source"] == str(Path("/tmp/s").resolve())


def test_a_field_without_a_kind_is_refused():
    @dataclasses.dataclass
    class Loose(cfg.StageConfig):
        size: int = 3

    with pytest.raises(TypeError, match="Loose.size"):
        list(cfg.config_fields(Loose))


def test_paths_given_as_text_become_paths():
    cls = STAGES["segment-train"].config_class
    config = cls(source="/tmp/s", translated=["/tmp/a"])
    assert config.source == Path("/tmp/s") and config.translated == [Path("/tmp/a")]


def test_a_number_out_of_its_bounds_is_refused_naming_the_option():
    from udaseg.errors import UdasegError

    cls = STAGES["cluster-styles"].config_class
    with pytest.raises(UdasegError, match="--styles 0 is out of range"):
        cls(translator=Path("/tmp/t"), styles=0)


def test_parse_ints_names_the_option():
    from udaseg.errors import UdasegError

    assert parse_ints("16x128x128", "--set patch_size") == [16, 128, 128]
    assert parse_ints([64, 64], "--set patch_size") == [64, 64]
    with pytest.raises(UdasegError, match="patch_size"):
        parse_ints("big", "--set patch_size")
