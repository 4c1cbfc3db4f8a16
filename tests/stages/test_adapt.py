"""`udaseg adapt`: every registered method through the stage, resume, model directories, refusals.

Each method gets a tiny configuration (tiny segmenter, 32x32 slices, a few steps) on the tiny
two-domain dataset; methods that translate online get a tiny CycleGAN run trained for 2 steps.
The per-method behaviour (losses, update order, masks) is tested in the method's own test file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import KillAt
from udaseg.adaptation.base import entropy_map
from udaseg.adaptation.registry import list_methods, method_spec
from udaseg.cli import app
from udaseg.errors import UdasegError
from udaseg.models.registry import model_spec
from udaseg.stages import adapt, preprocess, segment_train
from udaseg.stages import translate_train as translate_stage
from udaseg.training.checkpoint import load_checkpoint, load_model
from udaseg.translation.registry import translator_spec

# tiny segmenters and hparams overrides per method (paper widths are far too big for tests)
TINY = {
    "sifa.v1": ("sifa-encoder.v1", {"g_width": 4, "g_blocks": 1, "u_width": 4, "d_width": 4}),
    "adaptsegnet.v1": ("unet2d.v1", {"d_width": 4}),
    "advent.v1": ("unet2d.v1", {"d_width": 4}),
    "attent.v1": ("deeplabv2.v1", {"d_width": 4}),
    "glua.v1": ("unet2d.v1", {"d1_width": 8, "d2_width": 4}),
    "bigl.v1": ("dual-attention-unet.v1", {"d_width": 4}),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Preprocessed tiny stores, a source-only model and a tiny CycleGAN run."""
    from tests.conftest import write_tiny_dataset

    root = tmp_path_factory.mktemp("adapt")
    manifest = write_tiny_dataset(root / "raw")
    work = root / "w"
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=root / "raw"), work)
    source, target = work / "preprocessed" / "tiny__src", work / "preprocessed" / "tiny__tgt"
    segment_train.run(
        segment_train.SegmentTrainConfig(
            model="unet2d.v1",
            train_on="source",
            source=source,
            hparams={
                **model_spec("unet2d.v1").tiny,
                "steps": 2,
                "batch_size": 2,
                "patch_size": [32, 32],
            },
            name="src",
            device="cpu",
        ),
        work,
    )
    tiny_cyclegan(work, source, target, "cyc")
    return work, source, target


def tiny_cyclegan(work: Path, source: Path, target: Path, name: str) -> None:
    """A 2-iteration tiny CycleGAN run translating ``source``'s domain to ``target``'s."""
    hparams = {"steps": 2, "batch_size": 1, "patch_size": [32, 32]}
    translate_stage.run(
        translate_stage.TranslateTrainConfig(
            method="cyclegan.v1",
            source=source,
            target=target,
            hparams={**translator_spec("cyclegan.v1").tiny, **hparams},
            name=name,
            device="cpu",
        ),
        work,
    )


def config(ws, method: str, **overrides) -> adapt.AdaptConfig:
    work, source, target = ws
    model, hparams = TINY[method]
    base = dict(
        method=method,
        source=source,
        target=target,
        model=model,
        hparams={
            **model_spec(model).tiny,
            "steps": 4,
            "batch_size": 2,
            "patch_size": [32, 32],
            **hparams,
        },
        translator=work / "translate" / "cyc" if method_spec(method).needs_translator else None,
        checkpoint_every=2,
        val_every=2,
        log_every=1,
        device="cpu",
        seed=5,
    )
    base.update(overrides)
    return adapt.AdaptConfig(**base)


def log_rows(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_every_registered_method_has_a_tiny_configuration():
    """A newly registered method must say how it trains small here, so the test below trains it."""
    assert set(list_methods()) == set(TINY)


@pytest.mark.parametrize("method", list_methods())
def test_each_method_trains_and_writes_a_model_dir_predict_loads(ws, method, recwarn):
    work = ws[0]
    manifest = adapt.run(config(ws, method, name=f"m-{method}"), work)
    run = work / "adapt" / f"m-{method}"
    assert manifest.summary["steps"] == 4 and manifest.summary["method"] == method
    names = {p.name for p in run.iterdir()}
    assert {"checkpoint_final.pt", "checkpoint_latest.pt", "model.json", "metrics.jsonl"} <= names
    # target labels only ever inform: no checkpoint is picked with them
    assert "checkpoint_best.pt" not in names
    rows = log_rows(run)
    train_rows = [r for r in rows if "val" not in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all("total" in r for r in train_rows)
    # every method plays an adversarial game: its discriminator losses are logged
    assert any(k.startswith("d") and k not in ("dice",) for k in train_rows[-1]), train_rows[-1]
    assert not [r for r in rows if "val" in r]  # the tiny target has no labels to log Dice on
    model, info = load_model(run, "final")
    assert info["method"] == method and info["train_on"] == "adapt"
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 32, 32))
    assert out["logits"].shape == (1, 3, 32, 32)


def test_same_seed_repeats_and_resume_continues_exactly(ws):
    work = ws[0]
    adapt.run(config(ws, "advent.v1", name="whole"), work)
    with pytest.raises(KeyboardInterrupt):
        adapt.run(config(ws, "advent.v1", name="cut"), work, progress=KillAt(3))
    assert load_checkpoint(work / "adapt" / "cut.partial" / "checkpoint_latest.pt")["step"] == 2
    adapt.run(config(ws, "advent.v1", name="cut", resume=True), work)
    whole, cut = (
        load_checkpoint(work / "adapt" / n / "checkpoint_final.pt") for n in ("whole", "cut")
    )
    assert all(
        torch.equal(whole["state_dict"][k], cut["state_dict"][k]) for k in whole["state_dict"]
    )
    d_whole, d_cut = whole["training"]["modules"]["d1"], cut["training"]["modules"]["d1"]
    assert all(torch.equal(d_whole[k], d_cut[k]) for k in d_whole)
    assert log_rows(work / "adapt" / "whole") == log_rows(work / "adapt" / "cut")


def test_target_val_dice_is_logged_when_the_target_has_labels(ws):
    work, source, _ = ws
    # the labelled source store stands in for a target whose val cases are annotated
    adapt.run(config(ws, "advent.v1", name="val", target=source), work)
    rows = log_rows(work / "adapt" / "val")
    assert [r["step"] for r in rows if "val" in r] == [2, 4]
    assert set(rows[-1]["val"]["dice"]) == {"organ_a", "organ_b"}
    assert not (work / "adapt" / "val" / "checkpoint_best.pt").exists()


def test_init_warm_starts_the_segmenter_and_a_rerun_is_skipped(ws):
    work = ws[0]
    cfg = config(ws, "adaptsegnet.v1", name="warm", init=work / "segment" / "src", model=None)
    cfg.model_kwargs = {}
    cfg.hparams = {**cfg.hparams, "steps": 1, "lr": 0.0, "weight_decay": 0.0}
    adapt.run(cfg, work)
    start = load_checkpoint(work / "segment" / "src" / "checkpoint_final.pt")["state_dict"]
    adapted = load_checkpoint(work / "adapt" / "warm" / "checkpoint_final.pt")["state_dict"]
    # lr 0: the weights are the init model's (batch-norm statistics move in training mode)
    moving = ("running_mean", "running_var", "num_batches_tracked")
    assert all(torch.equal(start[k], adapted[k]) for k in start if not k.endswith(moving))
    again = adapt.run(cfg, work)
    assert again.summary["skipped"] is True


def test_a_model_that_extends_the_init_one_keeps_its_new_modules(ws):
    work = ws[0]
    cfg = config(ws, "bigl.v1", name="ext", init=work / "segment" / "src")
    cfg.hparams = {**cfg.hparams, "steps": 1}
    adapt.run(cfg, work)  # unet2d.v1 weights into dual-attention-unet.v1
    start = load_checkpoint(work / "segment" / "src" / "checkpoint_final.pt")["state_dict"]
    model, info = load_model(work / "adapt" / "ext", "final")
    adapted = model.state_dict()
    assert info["name"] == "dual-attention-unet.v1"
    new = set(adapted) - set(start)
    assert any("attention" in key for key in new), sorted(new)[:5]
    # the shared layers came from the init model: same names and shapes
    shared = set(start) & set(adapted)
    assert shared and all(start[k].shape == adapted[k].shape for k in shared)


def test_refusals_name_the_problem(ws):
    work, source, target = ws
    with pytest.raises(UdasegError, match="did you mean"):
        adapt.run(config(ws, "advent.v1", hparams={"stpes": 3}), work)
    with pytest.raises(UdasegError, match="needs --translator"):
        adapt.run(config(ws, "bigl.v1", translator=None), work)
    with pytest.raises(UdasegError, match="trains sifa-encoder.v1"):
        adapt.run(config(ws, "sifa.v1", model="unet2d.v1"), work)
    with pytest.raises(UdasegError, match="not a store artifact"):
        adapt.run(config(ws, "advent.v1", source=work / "segment" / "src"), work)
    with pytest.raises(UdasegError, match="not a model directory"):
        adapt.run(config(ws, "advent.v1", init=source), work)
    with pytest.raises(UdasegError, match="is 3D"):
        adapt.run(config(ws, "advent.v1", model="dar-unet.v1"), work)
    with pytest.raises(UdasegError, match="does not take --intensity-net"):
        adapt.run(config(ws, "sifa.v1", intensity_net=0.5), work)


def batches_seen(monkeypatch) -> list:
    """The AdaptBatch of every step from now on, in order."""
    seen = []
    real_batch = adapt._batch

    def spy(samplers, job, generator):
        batch = real_batch(samplers, job, generator)
        seen.append(batch)
        return batch

    monkeypatch.setattr(adapt, "_batch", spy)
    return seen


def test_intensity_net_re_renders_the_labelled_slices_only(ws, monkeypatch):
    seen = batches_seen(monkeypatch)
    work = ws[0]
    cfg = config(ws, "advent.v1", name="gin", intensity_net=1.0)
    cfg.hparams = {**cfg.hparams, "steps": 2}
    adapt.run(cfg, work)
    assert seen and all(b.original_source is not None for b in seen)
    assert not torch.equal(seen[0].source, seen[0].original_source)
    low, high = seen[0].original_source.amin(), seen[0].original_source.amax()
    assert seen[0].source.amin() >= low - 1e-5 and seen[0].source.amax() <= high + 1e-5


def test_methods_trained_on_translated_slices_warn_on_raw_source(ws):
    work = ws[0]
    cfg = config(ws, "attent.v1", name="warn")
    cfg.hparams = {**cfg.hparams, "steps": 1}
    with pytest.warns(UserWarning, match="attention-cyclegan.v1"):
        adapt.run(cfg, work)


def test_entropy_map_is_normalised():
    uniform = torch.zeros(1, 4, 2, 2)
    assert torch.allclose(entropy_map(uniform).sum(1), torch.ones(1, 2, 2))
    certain = torch.tensor([50.0, 0, 0, 0]).view(1, 4, 1, 1)
    assert entropy_map(certain).sum() < 1e-6


def test_cli_adapt_runs_and_shows_the_hparams(ws):
    work, source, target = ws
    runner = CliRunner()
    shown = runner.invoke(
        app, ["adapt", "--work", str(work), "--method", "advent.v1", "--show-defaults", "--json"]
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["hparams"]["adv_weights"] == [1e-3, 2e-4]
    args = ["adapt", "--work", str(work), "--method", "advent.v1", "--source", str(source)]
    args += ["--target", str(target), "--model", "unet2d.v1"]
    args += ["--set", "base_channels=4", "--set", "depth=3"]
    args += ["--set", "steps=2", "--set", "batch_size=2", "--set", "patch_size=32,32"]
    args += ["--set", "d_width=4"]
    args += ["--device", "cpu", "--json", "--name", "cli"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and (work / "adapt" / "cli" / "model.json").is_file()
    wrong = runner.invoke(app, [*args[:-1], "bad", "--set", "widht=3"])
    # (the console script turns these into their exit codes; CliRunner hands them back)
    assert isinstance(wrong.exception, UdasegError) and wrong.exception.exit_code == 2
    assert 'unknown --set key "widht"' in str(wrong.exception)
    missing = runner.invoke(app, ["adapt", "--work", str(work), "--method", "advent.v1"])
    assert isinstance(missing.exception, UdasegError) and missing.exception.exit_code == 2
    assert "--source and --target" in str(missing.exception)


def test_location_scale_and_ipa_remap_the_labelled_slices_only(ws, monkeypatch):
    seen = batches_seen(monkeypatch)
    work = ws[0]
    cfg = config(ws, "advent.v1", name="ls", location_scale=1.0, intensity_net=0.5, ipa=1.0)
    cfg.hparams = {**cfg.hparams, "steps": 2}
    adapt.run(cfg, work)
    assert seen and all(b.original_source is not None for b in seen)
    assert not torch.equal(seen[0].source, seen[0].original_source)
    with pytest.raises(UdasegError, match="does not take --location-scale"):
        adapt.run(config(ws, "sifa.v1", location_scale=0.5), work)
    with pytest.raises(UdasegError, match="--intensity-net"):
        adapt.run(config(ws, "advent.v1", name="x", ipa=0.5), work)


def test_a_translator_trained_target_to_source_is_used_reversed(ws, monkeypatch):
    work, source, target = ws
    tiny_cyclegan(work, target, source, "cyc-back")
    from udaseg.translation import io as translation_io
    from udaseg.translation.reverse import ReversedTranslator

    loaded = []
    real_load = translation_io.load_translator

    def spy(*args, **kwargs):
        translator, spec = real_load(*args, **kwargs)
        loaded.append(translator)
        return translator, spec

    monkeypatch.setattr(translation_io, "load_translator", spy)
    forward = adapt.run(config(ws, "bigl.v1", name="bigl-forward"), work)
    backward = adapt.run(
        config(ws, "bigl.v1", name="bigl-back", translator=work / "translate" / "cyc-back"), work
    )
    assert forward.summary["translator_direction"] == "forward"
    assert backward.summary["translator_direction"] == "reversed"
    assert not isinstance(loaded[0], ReversedTranslator)
    assert isinstance(loaded[1], ReversedTranslator)
    _, info = load_model(work / "adapt" / "bigl-back", "final")
    assert info["translator_direction"] == "reversed"
