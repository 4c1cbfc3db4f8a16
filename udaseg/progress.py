"""Progress reporting that stages can call without printing anything themselves.

Stages take a :class:`Progress` and report tasks and steps; the CLI passes a rich progress bar
(:func:`rich_progress`), library callers and tests get :class:`NullProgress` by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Progress(Protocol):
    def task(self, description: str, total: int | None) -> int: ...

    def advance(self, task: int, steps: int = 1, **fields: object) -> None: ...

    def log(self, message: str) -> None: ...


class NullProgress:
    """Reports nothing."""

    def task(self, description: str, total: int | None) -> int:
        return 0

    def advance(self, task: int, steps: int = 1, **fields: object) -> None:
        pass

    def log(self, message: str) -> None:
        pass


class _RichProgress:
    def __init__(self, progress, console) -> None:
        self._progress = progress
        self._console = console

    def task(self, description: str, total: int | None) -> int:
        return self._progress.add_task(description, total=total)

    def advance(self, task: int, steps: int = 1, **fields: object) -> None:
        self._progress.update(task, advance=steps, **fields)

    def log(self, message: str) -> None:
        self._progress.console.print(message)


def _fields_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class FieldsColumn(ProgressColumn):
        """What a stage reports beside the bar: the current loss, case, and so on."""

        def render(self, task) -> Text:
            return Text(" ".join(f"{k} {v}" for k, v in task.fields.items()), style="dim")

    return FieldsColumn()


@contextlib.contextmanager
def rich_progress(*, enabled: bool = True, stderr: bool = True) -> Iterator[Progress]:
    """A rich progress display (on stderr, so ``--json`` output on stdout stays clean)."""
    if not enabled:
        yield NullProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    console = Console(stderr=stderr)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        _fields_column(),
    )
    with RichProgress(*columns, console=console, transient=False) as progress:
        yield _RichProgress(progress, console)
