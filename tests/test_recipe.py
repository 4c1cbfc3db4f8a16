"""`udaseg run`: recipe loading, substitution, presets, stage selection, failures, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from udaseg.cli import app
from udaseg.errors import UdasegError
from udaseg.stages import recipe as recipes

RECIPE = """
description: test recipe
vars:
  raw: ${work}/raw
  steps: 100
  nested: ${raw}/deeper
presets:
  quick: {steps: 2}
stages:
  - name: first
    run: udaseg phantom --out ${raw} --size tiny
  - name: second
    label: Second
    run: >
      udaseg preprocess ${raw}/dataset.yaml
      --raw ${raw} --work ${work}
  - name: third
    run: udaseg segment-train --steps ${steps} --work ${work}
"""


def write(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_variables_presets_and_overrides_are_substituted(tmp_path):
    path = write(tmp_path)
    loaded = recipes.load_recipe(path, tmp_path / "w")
    work = str(tmp_path / "w")
    assert loaded.variables["nested"] == f"{work}/raw/deeper"
    assert loaded.stages[0].args == ["phantom", "--out", f"{work}/raw", "--size", "tiny"]
    # a folded multi-line command is one command
    assert loaded.stages[1].args[:2] == ["preprocess", f"{work}/raw/dataset.yaml"]
    assert loaded.stages[1].label == "Second"
    assert "--steps 100" in loaded.stages[2].command
    quick = recipes.load_recipe(path, tmp_path / "w", preset="quick")
    assert "--steps 2" in quick.stages[2].command
    chosen = recipes.load_recipe(path, tmp_path / "w", "quick", {"steps": 7})
    assert "--steps 7" in chosen.stages[2].command


def test_recipe_mistakes_are_named(tmp_path):
    path = write(tmp_path)
    with pytest.raises(UdasegError, match="did you mean"):
        recipes.load_recipe(path, tmp_path, preset="quik")
    with pytest.raises(UdasegError, match="--set"):
        recipes.load_recipe(path, tmp_path, overrides={"stepz": 1})
    bad = write(tmp_path, RECIPE.replace("${steps}", "${stpes}"))
    with pytest.raises(UdasegError, match=r"stage third .* uses \$\{stpes\}"):
        recipes.load_recipe(bad, tmp_path)
    loop = write(tmp_path, "vars: {a: '${b}', b: '${a}'}\nstages: [{name: x, run: udaseg x}]")
    with pytest.raises(UdasegError, match="cycle"):
        recipes.load_recipe(loop, tmp_path)
    twice = write(tmp_path, "stages: [{name: x, run: udaseg run a}, {name: x, run: udaseg run b}]")
    with pytest.raises(UdasegError, match="two stages named x"):
        recipes.load_recipe(twice, tmp_path)
    with pytest.raises(UdasegError, match="did you mean"):
        recipes.load_recipe("phantom-dmeo", tmp_path)


def test_only_and_from_select_stages(tmp_path):
    stages = recipes.load_recipe(write(tmp_path), tmp_path).stages
    assert [s.name for s in recipes.select(stages, ["third", "first"], None)] == [
        "first",
        "third",
    ]
    assert [s.name for s in recipes.select(stages, None, "second")] == ["second", "third"]
    with pytest.raises(UdasegError, match="did you mean"):
        recipes.select(stages, None, "secnod")


def test_every_shipped_recipe_loads_with_known_commands(tmp_path):
    shipped = sorted(recipes.BUILTIN.glob("*.yaml"))
    assert shipped
    for path in shipped:
        assert recipes.load_recipe(path, tmp_path).stages, path.name
        for stage in recipes.load_recipe(path, tmp_path).stages:
            recipes.check(stage)  # every option parses as the command would parse it
    unknown = write(tmp_path, "stages: [{name: x, run: udaseg segment-trian --steps 1}]")
    with pytest.raises(UdasegError, match='did you mean "segment-train"'):
        recipes.load_recipe(unknown, tmp_path)


def test_a_failing_stage_is_named_and_earlier_ones_are_kept(tmp_path):
    path = write(
        tmp_path,
        """
stages:
  - name: make
    run: udaseg phantom --out ${work}/raw --size tiny
  - name: broken
    run: udaseg preprocess ${work}/nowhere.yaml --raw ${work}/raw --work ${work}
""",
    )
    loaded = recipes.load_recipe(path, tmp_path / "w")
    with pytest.raises(UdasegError, match="stage broken failed") as caught:
        recipes.run(loaded, loaded.stages, echo=lambda line: None)
    assert "skipped when you run the recipe again" in caught.value.hint
    assert (tmp_path / "w" / "raw" / "dataset.yaml").is_file()
    bad_option = write(tmp_path, "stages: [{name: typo, run: udaseg phantom --outt x}]")
    loaded = recipes.load_recipe(bad_option, tmp_path / "w")
    with pytest.raises(UdasegError, match="stage typo: .*--outt"):
        recipes.run(loaded, loaded.stages, echo=lambda line: None)


def test_check_parses_options_without_running(tmp_path):
    good = recipes.Stage("ok", ["translate", "apply", "--translator", "t", "--work", "w"])
    recipes.check(good)
    typo = recipes.Stage("typo", ["translate", "apply", "--translater", "t", "--work", "w"])
    with pytest.raises(UdasegError, match="stage typo: .*--translater"):
        recipes.check(typo)
    missing = recipes.Stage("missing", ["adapt", "--method", "advent.v1"])
    with pytest.raises(UdasegError, match="stage missing: .*work"):
        recipes.check(missing)
    assert not (tmp_path / "w").exists()


def test_comparison_rows_come_from_evaluate_summaries(tmp_path):
    summary = {
        "n_cases": 2,
        "per_class": {"liver": {"dice": {"mean": 0.9}}, "spleen": {"dice": {"mean": 0.5}}},
        "mean_over_classes": {"dice": {"mean": 0.7}, "assd": {"mean": float("nan")}},
    }
    results = [
        {"stage": "e", "label": "Method", "summary": summary},
        {"stage": "p", "label": None, "summary": {"skipped": True}},
    ]
    rows = recipes.comparison(results)
    assert rows == [
        {
            "label": "Method",
            "stage": "e",
            "cases": 2,
            "dice": {"liver": 0.9, "spleen": 0.5},
            "mean_dice": 0.7,
            "mean_assd": rows[0]["mean_assd"],
            "mean_hd95": None,
        }
    ]
    recipe = recipes.Recipe("r", tmp_path / "r.yaml", "desc", [])
    table = recipes.comparison_markdown(rows, recipe)
    assert "| Method | 0.900 | 0.500 | 0.700 | — |" in table


def test_cli_dry_run_prints_plain_commands(tmp_path):
    path = write(tmp_path)
    result = CliRunner().invoke(
        app, ["run", str(path), "--work", str(tmp_path / "w"), "--dry-run", "--only", "first"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"udaseg phantom --out {tmp_path / 'w'}/raw --size tiny"
    as_json = CliRunner().invoke(
        app, ["run", str(path), "--work", str(tmp_path / "w"), "--dry-run", "--json"]
    )
    assert len(json.loads(as_json.stdout)["commands"]) == 3


def test_every_shipped_recipe_preset_parses_each_stage(tmp_path):
    """`udaseg run RECIPE --preset P --dry-run` works for every preset of every shipped recipe:
    the preset names only declared variables and every stage's options parse with the real
    command parser (a typo in a cpu-small override would otherwise surface hours into a run)."""
    import yaml

    checked = []
    for path in sorted(recipes.BUILTIN.glob("*.yaml")):
        presets = yaml.safe_load(path.read_text()).get("presets") or {}
        default = [s.name for s in recipes.load_recipe(path, tmp_path).stages]
        for preset in presets:
            loaded = recipes.load_recipe(path, tmp_path, preset=preset)
            assert [s.name for s in loaded.stages] == default, (path.name, preset)
            for stage in loaded.stages:
                recipes.check(stage)
            checked.append((path, preset))
    small = [path for path, preset in checked if preset == "cpu-small"]
    assert small, "no shipped recipe has a cpu-small preset"
    with pytest.raises(UdasegError, match='did you mean "cpu-small"'):
        recipes.load_recipe(small[0], tmp_path, preset="cpu-smal")
