"""A pipeline's stage command (``udaseg segment-train --model ... --work W``) as a stage call.

The words after ``udaseg`` name a stage of :data:`udaseg.stages.STAGES`; the options are that
stage's config fields, spelt as on the command line (:func:`udaseg.config.option_flag`), so a
pipeline line is exactly what a user would type and ``--dry-run`` prints a runnable script.
Values are converted by the field's type: ``--x`` / ``--no-x`` for a switch, a repeated option
for a list, ``--set key=value`` for hyperparameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udaseg import config as cfg
from udaseg.errors import UdasegError, did_you_mean
from udaseg.stages import STAGES, StageEntry

# options every stage command takes beside its config's fields
WORK_FLAGS = ("--work", "-w")
GLOBAL_SWITCHES = ("--force", "--json")


@dataclass
class Command:
    """One parsed stage command, ready to run."""

    entry: StageEntry
    config: Any
    work: Path | None
    force: bool = False

    def run(self, progress: Any = None) -> Any:
        return self.entry.run(self.config, self.work, force=self.force, progress=progress)


def parse(args: list[str]) -> Command:
    """Parse ``args`` (the words after ``udaseg``) into a :class:`Command`.

    Raises:
        UdasegError: an unknown command or option, a missing value, or a value of the wrong type,
            named; exit code 2.
    """
    entry, rest = _entry(args)
    cls = entry.config_class
    shapes = cfg.field_shapes(cls)
    fields = {cfg.option_flag(f.name): f for f in cfg.config_fields(cls)}
    argument = next((f for f in fields.values() if f.metadata.get("argument")), None)
    values: dict[str, Any] = {}
    work, force = None, False
    tokens = list(rest)
    while tokens:
        token = tokens.pop(0)
        if token in WORK_FLAGS:
            work = Path(_value(tokens, token))
            continue
        if token in GLOBAL_SWITCHES:
            force = force or token == "--force"
            continue
        if not token.startswith("-"):
            if argument is None or argument.name in values:
                raise UdasegError(
                    f"unexpected argument {token!r} for `udaseg {entry.command}`", exit_code=2
                )
            values[argument.name] = _convert(token, shapes[argument.name].item, token)
            continue
        name, inline, text = token.partition("=")
        if inline and name in fields:
            tokens.insert(0, text)
            token = name
        negated = token.startswith("--no-") and "--" + token[5:] in fields
        item = fields.get("--" + token[5:] if negated else token)
        if item is None:
            known = [*fields, *WORK_FLAGS, *GLOBAL_SWITCHES]
            raise UdasegError(
                f"`udaseg {entry.command}` has no option {token}{did_you_mean(token, known)}",
                exit_code=2,
            )
        _assign(values, item.name, shapes[item.name], token, negated, tokens)
    if entry.takes_work and work is None:
        raise UdasegError(f"`udaseg {entry.command}` needs --work", exit_code=2)
    try:
        config = cls(**values)
    except TypeError as exc:  # a required field left out
        raise UdasegError(f"`udaseg {entry.command}`: {exc}", exit_code=2) from exc
    return Command(entry, config, work, force)


def _entry(args: list[str]) -> tuple[StageEntry, list[str]]:
    for words in (2, 1):
        command = " ".join(args[:words])
        if len(args) >= words and command in STAGES:
            return STAGES[command], args[words:]
    first = args[0] if args else ""
    raise UdasegError(
        f"`udaseg {first}` is not a stage command{did_you_mean(first, list(STAGES))}",
        hint="a pipeline line runs one of: " + ", ".join(STAGES),
        exit_code=2,
    )


def _value(tokens: list[str], option: str) -> str:
    if not tokens:
        raise UdasegError(f"option {option} needs a value", exit_code=2)
    return tokens.pop(0)


def _assign(values, name: str, shape: cfg.Shape, token, negated, tokens) -> None:
    if shape.kind == "switch":
        values[name] = not negated
    elif shape.kind == "pairs":
        values.setdefault(name, {}).update(cfg.parse_kv([_value(tokens, token)], token))
    elif shape.kind == "list":
        values.setdefault(name, []).append(_convert(_value(tokens, token), shape.item, token))
    else:
        values[name] = _convert(_value(tokens, token), shape.item, token)


def _convert(text: str, kind: Any, option: str) -> Any:
    try:
        return kind(text) if kind in (int, float, Path) else text
    except ValueError as exc:
        raise UdasegError(
            f"option {option}: {text!r} is not a valid {kind.__name__}", exit_code=2
        ) from exc
