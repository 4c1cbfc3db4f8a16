"""The command line: help without torch, every stage's options from its config class, one
spelling per concept across commands."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from udaseg import config as cfg
from udaseg.data.manifest import load_manifest
from udaseg.stages import STAGES as ENTRIES

STAGES = (
    "phantom",
    "preprocess",
    "translate",
    "cluster-styles",
    "segment-train",
    "adapt",
    "pseudo-label",
    "predict",
    "evaluate",
    "report",
    "run",
)


def test_help_lists_every_stage_in_pipeline_order_and_imports_no_torch():
    code = (
        "import sys; sys.argv = ['udaseg', '--help']\n"
        "from udaseg.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8"
    )
    assert done.returncode == 0
    assert "NOTORCH" in done.stdout
    listed = [
        line.split()[1] for line in done.stdout.splitlines() if line[:2] == "│ " and line[2] != " "
    ]
    assert [name for name in listed if name in STAGES] == list(STAGES)


def test_every_stage_of_the_pipeline_is_a_command():
    import typer.main

    from udaseg.cli import app

    commands = set(typer.main.get_command(app).commands)
    stages = {"phantom", "preprocess", "translate", "cluster-styles", "segment-train", "adapt"}
    assert stages | {"predict", "evaluate", "run", "report"} <= commands
    assert set(typer.main.get_command(app).commands["translate"].commands) == {"train", "apply"}


def test_example_custom_manifest_is_valid():
    from tests.conftest import REPO

    manifest = load_manifest(REPO / "examples" / "custom_dataset.yaml")
    assert manifest.name == "my-study" and manifest.domain("target").labels is None


def test_every_subpackage_is_installed_by_pyproject():
    """A package missing from pyproject's explicit list works in an editable install but is
    absent from a wheel; catch it here."""
    import tomllib

    from tests.conftest import REPO

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "udaseg").rglob("__init__.py")
    }
    assert on_disk <= listed, f"add to pyproject.toml packages: {sorted(on_disk - listed)}"


def _commands():
    """Every command's click object, keyed by its words after ``udaseg``."""
    import typer.main

    from udaseg.cli import app

    group = typer.main.get_command(app)
    found = {}
    for name, command in group.commands.items():
        found[name] = command
        for sub, subcommand in getattr(command, "commands", {}).items():
            found[f"{name} {sub}"] = subcommand
    return found


@pytest.mark.parametrize("entry", list(ENTRIES.values()), ids=lambda e: e.command)
def test_a_stage_command_has_one_option_per_config_field_with_its_default(entry):
    command = _commands()[entry.command]
    params = {p.name: p for p in command.params}
    for item in cfg.config_fields(entry.config_class):
        assert item.name in params, f"--{item.name} missing from udaseg {entry.command}"
        option = params[item.name]
        if item.default is not dataclasses.MISSING:
            assert option.default == item.default, item.name
        assert cfg.help_of(entry.config_class, item.name) == option.help
    extra = set(params) - {f.name for f in cfg.config_fields(entry.config_class)}
    assert extra <= {"work", "force", "as_json", "show_defaults"}


def test_every_command_has_an_example_in_its_help():
    for name, command in _commands().items():
        if hasattr(command, "commands") and name != "translate":
            continue
        assert "Example: udaseg" in (command.help or ""), f"udaseg {name} --help has no example"


def test_a_short_flag_means_one_thing_everywhere():
    meanings: dict[str, set[str]] = {}
    for command in _commands().values():
        for param in command.params:
            for decl in getattr(param, "opts", []):
                if decl.startswith("-") and not decl.startswith("--"):
                    meanings.setdefault(decl, set()).add(param.name)
    assert {flag: names for flag, names in meanings.items() if len(names) > 1} == {}


def test_amp_and_checkpoint_have_one_default_everywhere():
    amp, checkpoint = set(), set()
    for entry in ENTRIES.values():
        names = {f.name for f in cfg.config_fields(entry.config_class)}
        if "amp" in names:
            amp.add(cfg.default(entry.config_class, "amp"))
        if "checkpoint" in names:
            checkpoint.add(cfg.default(entry.config_class, "checkpoint"))
    assert amp == {True} and checkpoint == {"final"}


def test_python_m_udaseg_is_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "udaseg", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("udaseg ")


def test_translate_without_work_is_an_error_not_help():
    from typer.testing import CliRunner

    from udaseg.cli import main

    done = subprocess.run(
        [sys.executable, "-m", "udaseg", "translate", "--translator", "somewhere"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--work" in done.stderr
    assert CliRunner and main  # the module-level entry point stays importable


def test_show_defaults_prints_the_resolved_hyperparameters():
    import json

    from typer.testing import CliRunner

    from udaseg.cli import app

    done = CliRunner().invoke(
        app,
        [
            "segment-train",
            "--work",
            "W",
            "--set",
            "steps=9",
            "--set",
            "base_channels=8",
            "--show-defaults",
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    shown = json.loads(done.output)
    assert shown["hparams"]["steps"] == 9 and shown["model_kwargs"] == {"base_channels": 8}
    assert shown["hparams"]["lr"] > 0  # the model's own default, printed as a number


def test_an_unknown_set_key_is_named():
    from typer.testing import CliRunner

    from udaseg.cli import app

    done = CliRunner().invoke(
        app, ["segment-train", "--work", "W", "--set", "stepz=9", "--show-defaults"]
    )
    assert getattr(done.exception, "exit_code", None) == 2
    assert "stepz" in str(done.exception) and "steps" in str(done.exception)
