"""The package's imports point one way: cli -> pipeline -> stages -> shared layers -> basics.

Read with ``ast`` from the source files (nothing is imported), so a new module that imports
upwards, a stage that imports another stage, or a library module that imports the command line
fails here with the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "udaseg"

# top to bottom; a module may import its own layer's packages or any layer below it
LAYERS = (
    ("cli",),
    ("pipeline",),
    ("stages",),
    ("training", "inference", "translation", "adaptation", "evaluation", "reporting"),
    ("models", "losses", "data", "metrics"),
    ("artifacts", "layout", "config", "errors", "progress", "registry", "device", "__init__"),
)
ENTRY_POINTS = ("__main__",)


def _layer(part: str) -> int:
    for depth, names in enumerate(LAYERS):
        if part in names:
            return depth
    raise AssertionError(f"udaseg.{part} is in no layer of this test: add it to LAYERS")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every udaseg import in ``path``, top level or not."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(("udaseg", *path.relative_to(PACKAGE).with_suffix("").parts))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("udaseg")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name == "udaseg":  # ``from udaseg import layout``: the names are modules
                found += [(node.lineno, f"udaseg.{a.name}") for a in node.names]
            elif name.startswith("udaseg."):
                found.append((node.lineno, name))
    return found


def _part(path_or_name: str) -> str:
    parts = path_or_name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _own_part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    own = _own_part(path)
    if own in ENTRY_POINTS:
        return
    wrong = []
    for line, name in _imports(path):
        target = _part(name)
        if target == "__version__":
            continue
        if _layer(target) < _layer(own):
            wrong.append(f"{path.name}:{line} imports {name} (a layer above {own})")
        if own == "stages" and target == "stages" and path.name != "__init__.py":
            stage = name.split(".")[2] if name.count(".") >= 2 else ""
            if stage and stage != path.stem:
                wrong.append(f"{path.name}:{line} imports the stage {name}")
    assert not wrong, "\n".join(wrong)


def test_only_the_entry_points_import_the_command_line():
    importers = {
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if _own_part(path) != "cli" and any(_part(n) == "cli" for _, n in _imports(path))
    }
    assert importers == {"__main__.py"}


def test_the_layer_test_sees_upward_imports(tmp_path, monkeypatch):
    bad = PACKAGE / "models" / "unet.py"
    assert any(_part(n) in ("errors", "registry") for _, n in _imports(bad))
    fake = tmp_path / "udaseg" / "metrics" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from udaseg.stages import predict\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "udaseg")
    with pytest.raises(AssertionError, match="a layer above metrics"):
        test_imports_point_down(fake)
