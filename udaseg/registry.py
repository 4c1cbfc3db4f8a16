"""A name -> spec registry, shared by every kind of registered thing (models, translators, ...).

Each kind keeps its own spec dataclass (what it needs to know about an entry) and a loader that
imports the modules whose decorators fill the registry, so nothing is imported until a name is
looked up. Unknown names raise :class:`~udaseg.errors.UdasegError` with a "did you mean".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from udaseg.errors import look_up_option

Spec = TypeVar("Spec")


class Registry(Generic[Spec]):
    """Specs by versioned name.

    Args:
        what: how an entry is called in messages ("model", "translation method").
        load: imports the built-in modules (their decorators call :meth:`add`).
    """

    def __init__(self, what: str, load: Callable[[], None]) -> None:
        self.what, self._load, self._specs = what, load, {}

    def add(self, name: str, spec: Spec) -> None:
        if name in self._specs:
            raise ValueError(f"{self.what} {name} registered twice")
        self._specs[name] = spec

    def decorator(self, name: str, make_spec: Callable[[Callable], Spec]) -> Callable:
        """A decorator registering ``make_spec(builder)`` under ``name`` and returning the
        builder unchanged (what each kind's ``register_*`` returns)."""

        def wrap(builder: Callable) -> Callable:
            self.add(name, make_spec(builder))
            return builder

        return wrap

    def get(self, name: str) -> Spec:
        self._load()
        look_up_option(name, self._specs, what=self.what)
        return self._specs[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._specs)

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __getitem__(self, name: str) -> Spec:
        return self._specs[name]


def first_doc_line(builder: Callable) -> str:
    """The first line of a builder's docstring, the default description of an entry."""
    return (builder.__doc__ or "").strip().split("\n")[0]


def accepted_kwargs(builder: Callable) -> set[str]:
    """Keyword names ``builder`` takes; for a class whose ``__init__`` passes ``**kwargs`` on,
    its base classes' names too (``CycleGAN(width, **kwargs)`` -> ``CycleTranslator``'s loss
    weights)."""
    import inspect

    if inspect.isclass(builder):
        functions = [c.__init__ for c in builder.__mro__ if "__init__" in vars(c)]
    else:
        functions = [builder]
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names: set[str] = set()
    for function in functions:
        parameters = list(inspect.signature(function).parameters.values())
        names |= {p.name for p in parameters if p.kind in keyword and p.name != "self"}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return names
