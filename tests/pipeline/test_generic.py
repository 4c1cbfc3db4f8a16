"""The dataset-generic pipeline machinery: variables from a manifest, `when:` conditions, optional
stage groups (`--with`), the outputs a run points to; and the shipped `uda` pipeline on any
manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from udaseg.errors import UdasegError
from udaseg.pipeline import runner as pipelines

GENERIC = """
description: generic test pipeline
vars:
  dataset: x
  size: ""
  tgt: tgt
  data: ${work}/preprocessed/${dataset_name}
dataset:
  manifest: ${dataset}
  inplane_size: ${size}
stages:
  - name: prep
    run: udaseg preprocess ${dataset} --raw ${work}/raw --work ${work} ${geometry}
  - name: train
    run: udaseg segment-train --source ${data}__src --work ${work} --set patch_size=${patch}
  - name: score
    when: labelled:${tgt}
    run: >
      udaseg evaluate --pred ${work}/p --ref ${work}/raw --dataset ${dataset} --domain ${tgt}
      --work ${work}
  - name: bound
    optional: bounds
    run: udaseg segment-train --source ${data}__src --work ${work} --name b
  - name: bound-score
    optional: bounds
    run: udaseg evaluate --pred ${work}/b --ref ${work}/raw --dataset ${dataset} --work ${work}
outputs:
  predictions: ${work}/p
"""


def load(tmp_path: Path, manifest: Path, **overrides) -> pipelines.Pipeline:
    path = tmp_path / "generic.yaml"
    path.write_text(GENERIC)
    variables = {"dataset": str(manifest), **overrides}
    return pipelines.load_pipeline(path, tmp_path / "w", None, variables)


def test_the_manifest_gives_store_names_patch_and_geometry(tmp_path, tiny_dataset):
    _, manifest = tiny_dataset
    loaded = load(tmp_path, manifest)
    work = tmp_path / "w"
    assert loaded.variables["dataset_name"] == "tiny"
    assert loaded.variables["patch"] == "24,24"  # the manifest's inplane_size
    assert loaded.variables["geometry"] == ""  # the manifest's own grid
    assert f"--source {work}/preprocessed/tiny__src" in loaded.stages[1].command
    assert "--set patch_size=24,24" in loaded.stages[1].command


def test_a_size_keeps_the_manifests_field_of_view(tmp_path, tiny_dataset):
    _, manifest = tiny_dataset
    loaded = load(tmp_path, manifest, size="12")  # 24 px of 2 mm -> 12 px of 4 mm
    assert loaded.variables["patch"] == "12,12"
    args = loaded.stages[0].args
    assert args[args.index("geometry.inplane_mm=4") - 1] == "--set"
    assert "geometry.inplane_size=[12,12]" in args
    # the options parse as preprocess options, and the manifest they give has that grid
    config = pipelines._parse(loaded.stages[0]).config
    from udaseg.data.manifest import load_manifest

    resized = load_manifest(manifest, config.overrides)
    assert resized.geometry.inplane_mm == 4.0 and resized.geometry.inplane_size == (12, 12)


@pytest.mark.parametrize("size", ["0", "big", "-3"])
def test_a_size_that_is_not_a_pixel_count_is_refused(tmp_path, tiny_dataset, size):
    _, manifest = tiny_dataset
    with pytest.raises(UdasegError, match="not a positive integer"):
        load(tmp_path, manifest, size=size)


def test_a_variable_may_not_shadow_a_derived_one(tmp_path, tiny_dataset):
    _, manifest = tiny_dataset
    path = tmp_path / "bad.yaml"
    path.write_text(GENERIC.replace('  size: ""\n', '  size: ""\n  patch: 64,64\n'))
    with pytest.raises(UdasegError, match="patch is defined by its dataset section"):
        pipelines.load_pipeline(path, tmp_path / "w", None, {"dataset": str(manifest)})


def test_a_stage_for_labelled_targets_does_not_apply_to_an_unlabelled_one(tmp_path, tiny_dataset):
    _, manifest = tiny_dataset
    unlabelled = load(tmp_path, manifest)  # tiny's tgt has no labels
    assert unlabelled.stages[2].not_applicable == "domain tgt of tiny has no labels"
    labelled = load(tmp_path, manifest, tgt="src")
    assert labelled.stages[2].not_applicable is None
    with pytest.raises(UdasegError, match="domain of tiny"):
        load(tmp_path, manifest, tgt="nope")


def test_optional_groups_run_only_when_asked(tmp_path, tiny_dataset):
    _, manifest = tiny_dataset
    stages = load(tmp_path, manifest).stages
    assert [s.name for s in pipelines.select(stages, None, None)] == ["prep", "train", "score"]
    chosen = pipelines.select(stages, None, None, ["bounds"])
    assert [s.name for s in chosen] == ["prep", "train", "score", "bound", "bound-score"]
    assert [s.name for s in pipelines.select(stages, None, "score", ["bounds"])] == [
        "score",
        "bound",
        "bound-score",
    ]
    assert [s.name for s in pipelines.select(stages, ["bound"], None)] == ["bound"]
    with pytest.raises(UdasegError, match='did you mean "bounds"'):
        pipelines.select(stages, None, None, ["bound"])


def test_a_not_applicable_stage_is_recorded_and_outputs_are_printed(tmp_path, tiny_dataset):
    _, manifest = tiny_dataset
    loaded = load(tmp_path, manifest)
    (tmp_path / "w" / "p").mkdir(parents=True)
    lines = []
    record = pipelines.run(loaded, [loaded.stages[2]], echo=lines.append)
    assert record["stages"][0]["status"] == "not applicable"
    assert record["outputs"] == {"predictions": str(tmp_path / "w" / "p")}
    assert lines == [
        "  score: not applicable, domain tgt of tiny has no labels",
        f"predictions: {tmp_path / 'w' / 'p'}",
    ]


@pytest.mark.parametrize("dataset", ["abdominal-normalized", "mmwhs", "chaos", "custom"])
@pytest.mark.parametrize("preset", [None, "cpu-small", "cpu-90", "smoke"])
def test_uda_parses_on_every_manifest(tmp_path, dataset, preset):
    """The generic route has no dataset constants: on any built-in manifest every stage parses
    with the real command parser, and store names, sizes and evaluation follow the manifest."""
    from udaseg.data.manifest import load_manifest

    manifest = load_manifest(dataset)
    src, tgt = list(manifest.domains)[:2]
    variables = {"dataset": dataset, "src": src, "tgt": tgt}
    loaded = pipelines.load_pipeline("uda", tmp_path, preset, variables)
    for stage in loaded.stages:
        pipelines.check(stage)
        if "--source" in stage.args:
            assert stage.args[stage.args.index("--source") + 1].endswith(f"{manifest.name}__{src}")
    scored = [s for s in loaded.stages if s.kind == "evaluate"]
    assert all((s.not_applicable is None) == manifest.domains[tgt].labelled for s in scored)
    if preset in ("cpu-small", "cpu-90"):
        assert loaded.variables["patch"].split(",")[0] in ("128", loaded.variables["patch"][:3])
        assert max(int(n) for n in loaded.variables["patch"].split(",")) == 128


def test_uda_cpu_small_on_the_abdominal_data_is_the_abdominal_route(tmp_path):
    """The generic route's cpu-small preset on abdominal-normalized runs exactly the commands of
    the abdominal pipeline's best route, so its artifacts (and numbers) are the same ones."""
    common = {"raw": "/data", "src": "ct", "tgt": "mr"}
    generic = pipelines.load_pipeline(
        "uda", tmp_path, "cpu-small", {**common, "dataset": "abdominal-normalized"}
    )
    route = pipelines.load_pipeline("abdominal-cpu", tmp_path, "long-translator", common)
    by_name = {s.name: s for s in route.stages}
    pairs = {
        "source-gin": "no-adaptation-gin",
        "cyclegan": "cyclegan",
        "bigl-gin": "bigl-gin",
        "pseudo-label": "pseudo-label",
        "student": "self-train",
    }
    generic_stages = {s.name: s for s in generic.stages}
    for ours, theirs in pairs.items():
        assert (
            pipelines._parse(generic_stages[ours]).config
            == pipelines._parse(by_name[theirs]).config
        ), ours
    ours_pre = pipelines._parse(generic_stages["preprocess"]).config
    theirs_pre = pipelines._parse(by_name["preprocess"]).config
    from udaseg.data.manifest import load_manifest

    assert load_manifest("abdominal-normalized", ours_pre.overrides) == load_manifest(
        "abdominal-normalized", theirs_pre.overrides
    )


def test_the_two_directions_can_share_one_translator(tmp_path):
    """translator_from/translator_to name the other run's translator: the MR -> CT run's
    translator stage is then the CT -> MR run's (same artifact) and BiGL reads it."""
    common = {"raw": "/data", "dataset": "abdominal-normalized"}
    forward = pipelines.load_pipeline(
        "uda", tmp_path, "cpu-90", {**common, "src": "ct", "tgt": "mr"}
    )
    shared = pipelines.load_pipeline(
        "uda",
        tmp_path,
        "cpu-90",
        {**common, "src": "mr", "tgt": "ct", "translator_from": "ct", "translator_to": "mr"},
    )

    def config(loaded, name):
        return pipelines._parse(next(s for s in loaded.stages if s.name == name)).config

    assert config(shared, "cyclegan") == config(forward, "cyclegan")
    bigl = config(shared, "bigl-gin")
    assert Path(bigl.translator) == tmp_path / "translate" / "cyclegan-ct-to-mr"
    assert Path(bigl.source).name.endswith("__mr") and Path(bigl.target).name.endswith("__ct")


GROUPS = """
vars: {}
presets:
  full: {with: [bounds]}
  one: {with: extra}
stages:
  - name: base
    run: udaseg report --work ${work}/base
  - name: bound
    optional: bounds
    run: udaseg report --work ${work}/bound
  - name: more
    optional: extra
    run: udaseg report --work ${work}/more
"""


def groups_pipeline(tmp_path: Path, text: str = GROUPS) -> Path:
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    return path


def dry_run(tmp_path: Path, *options: str) -> list[str]:
    """The stages `udaseg run groups.yaml --dry-run` prints: the last folder of each command."""
    from typer.testing import CliRunner

    from udaseg.cli import app

    path = groups_pipeline(tmp_path)
    result = CliRunner().invoke(
        app, ["run", str(path), "--work", str(tmp_path / "w"), "--dry-run", *options]
    )
    assert result.exit_code == 0, result.output
    return [Path(line.split()[-1]).name for line in result.stdout.splitlines()]


def test_a_preset_with_groups_runs_their_stages(tmp_path):
    assert dry_run(tmp_path) == ["base"]
    assert dry_run(tmp_path, "--preset", "full") == ["base", "bound"]
    assert dry_run(tmp_path, "--preset", "one") == ["base", "more"]  # one group as a string
    loaded = pipelines.load_pipeline(groups_pipeline(tmp_path), tmp_path / "w", "full")
    assert loaded.preset_with == ["bounds"]


def test_with_on_the_command_line_adds_to_the_presets_groups(tmp_path):
    assert dry_run(tmp_path, "--preset", "full", "--with", "extra") == ["base", "bound", "more"]
    assert dry_run(tmp_path, "--preset", "full", "--with", "bounds") == ["base", "bound"]
    assert dry_run(tmp_path, "--preset", "full", "--only", "base") == ["base"]


def test_an_unknown_group_in_a_preset_is_refused_when_the_pipeline_loads(tmp_path):
    path = groups_pipeline(tmp_path, GROUPS.replace("with: [bounds]", "with: [bound]"))
    with pytest.raises(
        UdasegError, match=r'group \(with: of preset full in .*groups.yaml\) "bound"'
    ) as caught:
        pipelines.load_pipeline(path, tmp_path / "w", "full")
    assert 'did you mean "bounds"' in caught.value.message
    listed = groups_pipeline(tmp_path, GROUPS.replace("with: [bounds]", "with: {bounds: 1}"))
    with pytest.raises(UdasegError, match="with: must list optional stage groups"):
        pipelines.load_pipeline(listed, tmp_path / "w", "full")


def test_a_preset_still_sets_only_declared_variables_and_with_is_reserved(tmp_path):
    path = groups_pipeline(tmp_path, GROUPS.replace("with: extra", "with: extra, stepz: 3"))
    with pytest.raises(UdasegError, match='variable in preset one "stepz"'):
        pipelines.load_pipeline(path, tmp_path / "w", "one")
    reserved = groups_pipeline(tmp_path, GROUPS.replace("vars: {}", "vars: {with: x}"))
    with pytest.raises(UdasegError, match="may not be named with"):
        pipelines.load_pipeline(reserved, tmp_path / "w")


def test_the_run_summary_records_the_presets_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(pipelines, "_call", lambda stage, *rest: {"output": ""})
    loaded = pipelines.load_pipeline(groups_pipeline(tmp_path), tmp_path / "w", "full")
    chosen = pipelines.select(loaded.stages, None, None, [*loaded.preset_with, "extra"])
    record = pipelines.run(loaded, chosen, echo=lambda line: None)
    assert record["preset"] == "full"
    assert record["preset_with"] == ["bounds"]
    assert record["with"] == ["bounds", "extra"]
    written = json.loads(Path(record["output"], "summary.json").read_text())
    assert (written["preset_with"], written["with"]) == (["bounds"], ["bounds", "extra"])
    plain = pipelines.load_pipeline(groups_pipeline(tmp_path), tmp_path / "w")
    record = pipelines.run(plain, pipelines.select(plain.stages, None, None), echo=lambda _: None)
    assert (record["preset"], record["preset_with"], record["with"]) == (None, [], [])
