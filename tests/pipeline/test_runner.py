"""`udaseg run`: pipeline loading, substitution, presets, stage selection, failures, the table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from udaseg.cli import app
from udaseg.errors import UdasegError
from udaseg.evaluation.comparison import comparison, comparison_markdown
from udaseg.pipeline import runner as pipelines

PIPELINE = """
description: test pipeline
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
    run: udaseg segment-train --set steps=${steps} --work ${work}
"""


def write(tmp_path: Path, text: str = PIPELINE) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_variables_presets_and_overrides_are_substituted(tmp_path):
    path = write(tmp_path)
    loaded = pipelines.load_pipeline(path, tmp_path / "w")
    work = str(tmp_path / "w")
    assert loaded.variables["nested"] == f"{work}/raw/deeper"
    assert loaded.stages[0].args == ["phantom", "--out", f"{work}/raw", "--size", "tiny"]
    # a folded multi-line command is one command
    assert loaded.stages[1].args[:2] == ["preprocess", f"{work}/raw/dataset.yaml"]
    assert loaded.stages[1].label == "Second"
    assert "--set steps=100" in loaded.stages[2].command
    quick = pipelines.load_pipeline(path, tmp_path / "w", preset="quick")
    assert "--set steps=2" in quick.stages[2].command
    chosen = pipelines.load_pipeline(path, tmp_path / "w", "quick", {"steps": 7})
    assert "--set steps=7" in chosen.stages[2].command


def test_pipeline_mistakes_are_named(tmp_path):
    path = write(tmp_path)
    with pytest.raises(UdasegError, match="did you mean"):
        pipelines.load_pipeline(path, tmp_path, preset="quik")
    with pytest.raises(UdasegError, match="--var"):
        pipelines.load_pipeline(path, tmp_path, overrides={"stepz": 1})
    bad = write(tmp_path, PIPELINE.replace("${steps}", "${stpes}"))
    with pytest.raises(UdasegError, match=r"stage third .* uses \$\{stpes\}"):
        pipelines.load_pipeline(bad, tmp_path)
    loop = write(tmp_path, "vars: {a: '${b}', b: '${a}'}\nstages: [{name: x, run: udaseg x}]")
    with pytest.raises(UdasegError, match="cycle"):
        pipelines.load_pipeline(loop, tmp_path)
    twice = write(
        tmp_path, "stages: [{name: x, run: udaseg report}, {name: x, run: udaseg report}]"
    )
    with pytest.raises(UdasegError, match="two stages named x"):
        pipelines.load_pipeline(twice, tmp_path)
    with pytest.raises(UdasegError, match="did you mean"):
        pipelines.load_pipeline("phantom-dmeo", tmp_path)


def test_only_and_from_select_stages(tmp_path):
    stages = pipelines.load_pipeline(write(tmp_path), tmp_path).stages
    assert [s.name for s in pipelines.select(stages, ["third", "first"], None)] == [
        "first",
        "third",
    ]
    assert [s.name for s in pipelines.select(stages, None, "second")] == ["second", "third"]
    with pytest.raises(UdasegError, match="did you mean"):
        pipelines.select(stages, None, "secnod")


def test_every_shipped_pipeline_loads_with_known_commands(tmp_path):
    shipped = sorted(pipelines.BUILTIN.glob("*.yaml"))
    assert shipped
    for path in shipped:
        assert pipelines.load_pipeline(path, tmp_path).stages, path.name
        for stage in pipelines.load_pipeline(path, tmp_path).stages:
            pipelines.check(stage)  # every option parses as the command would parse it
    unknown = write(tmp_path, "stages: [{name: x, run: udaseg segment-trian --set steps=1}]")
    with pytest.raises(UdasegError, match='did you mean "segment-train"'):
        pipelines.load_pipeline(unknown, tmp_path)


def phantom_then_preprocess(tmp_path: Path, name: str, manifest: str) -> Path:
    """A pipeline: stage "make" writes the tiny phantom, stage ``name`` preprocesses
    ``manifest`` with it."""
    stages = [
        {"name": "make", "run": "udaseg phantom --out ${work}/raw --size tiny"},
        {"name": name, "run": f"udaseg preprocess {manifest} --raw ${{work}}/raw --work ${{work}}"},
    ]
    return write(tmp_path, json.dumps({"stages": stages}))


def test_a_failing_stage_is_named_and_earlier_ones_are_kept(tmp_path):
    path = phantom_then_preprocess(tmp_path, "broken", "${work}/nowhere.yaml")
    loaded = pipelines.load_pipeline(path, tmp_path / "w")
    with pytest.raises(UdasegError, match="stage broken failed") as caught:
        pipelines.run(loaded, loaded.stages, echo=lambda line: None)
    assert "skipped when you run the pipeline again" in caught.value.hint
    assert (tmp_path / "w" / "raw" / "dataset.yaml").is_file()
    bad_option = write(tmp_path, "stages: [{name: typo, run: udaseg phantom --outt x}]")
    loaded = pipelines.load_pipeline(bad_option, tmp_path / "w")
    with pytest.raises(UdasegError, match="stage typo: .*--outt"):
        pipelines.run(loaded, loaded.stages, echo=lambda line: None)


def test_check_parses_options_without_running(tmp_path):
    good = pipelines.Stage("ok", ["translate", "apply", "--translator", "t", "--work", "w"])
    pipelines.check(good)
    typo = pipelines.Stage("typo", ["translate", "apply", "--translater", "t", "--work", "w"])
    with pytest.raises(UdasegError, match="stage typo: .*--translater"):
        pipelines.check(typo)
    missing = pipelines.Stage("missing", ["adapt", "--method", "advent.v1"])
    with pytest.raises(UdasegError, match="stage missing: .*work"):
        pipelines.check(missing)
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
    rows = comparison(results)
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
    pipeline = pipelines.Pipeline("r", tmp_path / "r.yaml", "desc", [])
    table = comparison_markdown(rows, pipeline)
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


def test_every_shipped_pipeline_preset_parses_each_stage(tmp_path):
    """`udaseg run PIPELINE --preset P --dry-run` works for every preset of every shipped pipeline:
    the preset names only declared variables and every stage's options parse with the real
    command parser (a typo in a cpu-small override would otherwise surface hours into a run)."""
    import yaml

    checked = []
    for path in sorted(pipelines.BUILTIN.glob("*.yaml")):
        presets = yaml.safe_load(path.read_text()).get("presets") or {}
        default = [s.name for s in pipelines.load_pipeline(path, tmp_path).stages]
        for preset in presets:
            loaded = pipelines.load_pipeline(path, tmp_path, preset=preset)
            assert [s.name for s in loaded.stages] == default, (path.name, preset)
            for stage in loaded.stages:
                pipelines.check(stage)
            checked.append((path, preset))
    small = [path for path, preset in checked if preset == "cpu-small"]
    assert small, "no shipped pipeline has a cpu-small preset"
    with pytest.raises(UdasegError, match='did you mean "cpu-small"'):
        pipelines.load_pipeline(small[0], tmp_path, preset="cpu-smal")


def _builtin_stages():
    from udaseg.pipeline.runner import builtin_folder

    for path in sorted(builtin_folder().glob("*.yaml")):
        loaded = pipelines.load_pipeline(path.stem, Path("/tmp/W"))
        for stage in loaded.stages:
            yield pytest.param(stage, id=f"{path.stem}:{stage.name}")


@pytest.mark.parametrize("stage", list(_builtin_stages()))
def test_a_pipeline_line_means_what_the_command_line_means(stage):
    """Every stage of every shipped pipeline builds the same config through the pipeline's
    parser (what `udaseg run` executes) and through the command line (what --dry-run prints)."""
    import typer.main

    from udaseg.cli.common import config_from_options
    from udaseg.pipeline.commands import parse

    parsed = parse(stage.args)
    command, args = typer.main.get_command(app), list(stage.args)
    while hasattr(command, "commands") and args and args[0] in command.commands:
        command = command.commands[args.pop(0)]
    params = dict(command.make_context("udaseg", args).params)
    for key in ("work", "force", "as_json", "show_defaults"):
        params.pop(key, None)
    assert config_from_options(parsed.entry.config_class, params) == parsed.config


def test_a_pipeline_with_an_unknown_option_is_refused_before_it_runs(tmp_path):
    text = (
        "vars: {}\nstages:\n  - name: bad\n"
        "    run: udaseg segment-train --source ${work}/s --work ${work} --stepz 3\n"
    )
    (tmp_path / "p.yaml").write_text(text)
    loaded = pipelines.load_pipeline(tmp_path / "p.yaml", tmp_path)
    with pytest.raises(UdasegError, match="stage bad.*--stepz.*did you mean"):
        pipelines.check(loaded.stages[0])


def test_a_stage_whose_artifact_another_process_builds_fails_or_waits(tmp_path):
    import threading

    from udaseg import artifacts

    path = phantom_then_preprocess(tmp_path, "stores", "${work}/raw/dataset.yaml")
    work = tmp_path / "w"
    loaded = pipelines.load_pipeline(path, work)
    store = work / "preprocessed" / "phantom-abdomen__ct"
    # the lock stands for another process: flock excludes every other holder
    failed = pytest.raises(UdasegError, match="stage stores failed: .*another process")
    with artifacts.locked(store), failed as caught:
        pipelines.run(loaded, loaded.stages, echo=lambda line: None)
    assert caught.value.exit_code == 3 and not store.exists()

    holding, lines = threading.Event(), []

    def hold() -> None:
        with artifacts.locked(store):
            holding.set()
            time.sleep(1.0)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    record = pipelines.run(loaded, loaded.stages, echo=lines.append, wait_for_locks=0.2)
    holder.join()
    # said once however many times it polled, then how long it waited
    assert len([line for line in lines if "waiting" in line]) == 1
    assert any(line.startswith("  stores: waited") for line in lines)
    assert [s["status"] for s in record["stages"]] == ["skipped", "ran"]
    assert (store / "manifest.json").is_file()
