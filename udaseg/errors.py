"""The one exception type users see.

Every failure a user can fix (a missing file, a bad option, a stale input) is raised as
:class:`UdasegError` with a message that says what went wrong and where, and a hint that says how to
fix it. The CLI prints it without a traceback and exits non-zero; library callers can catch it.
"""

from __future__ import annotations

from pathlib import Path


class UdasegError(Exception):
    """A problem the user can fix.

    Args:
        message: what went wrong, naming the file, case or option.
        hint: how to fix it (one sentence), or None.
        path: the file or directory concerned, if any; shown with the message.
        exit_code: process exit code the CLI uses (2 for usage errors, 1 otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        path: str | Path | None = None,
        exit_code: int = 1,
    ) -> None:
        self.message = message
        self.hint = hint
        self.path = Path(path) if path is not None else None
        self.exit_code = exit_code
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.message
        if self.path is not None and str(self.path) not in text:
            text = f"{text} ({self.path})"
        if self.hint:
            text = f"{text}\n  fix: {self.hint}"
        return text


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def look_up_option(name: str, choices: dict | list | tuple, *, what: str) -> str:
    """Check that ``name`` is one of ``choices``; raise a :class:`UdasegError` that lists them.

    Returns the name unchanged so it can be used inline.
    """
    keys = list(choices)
    if name in keys:
        return name
    raise UdasegError(
        f'unknown {what} "{name}"{did_you_mean(name, keys)}',
        hint=f"choose one of: {', '.join(sorted(map(str, keys)))}",
        exit_code=2,
    )
