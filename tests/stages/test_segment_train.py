"""`udaseg segment-train`: determinism, resume, artifacts, sampling and schedules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import KillAt
from udaseg import artifacts
from udaseg.data.sampling import PatchSampler, SliceSampler, Source, VolumeBank, fit
from udaseg.data.store import Store
from udaseg.errors import UdasegError
from udaseg.models.registry import model_spec
from udaseg.stages import preprocess, segment_train
from udaseg.training.checkpoint import load_checkpoint, load_model
from udaseg.training.optim import lr_factor


@pytest.fixture
def stores(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=raw), tmp_path / "w")
    root = tmp_path / "w" / "preprocessed"
    return root / "tiny__src", root / "tiny__tgt"


def config(store, train=None, **overrides) -> segment_train.SegmentTrainConfig:
    """A tiny U-Net run on ``store`` (or the ``train`` stores: source, then pseudo-labelled)."""
    train_on = overrides.pop("train_on", "source")
    model_kwargs = overrides.pop("model_kwargs", dict(model_spec("unet2d.v1").tiny))
    hparams = overrides.pop(
        "hparams", {"steps": 6, "batch_size": 2, "patch_size": [32, 32], "lr": 1e-3}
    )
    stores = list(train or [store])
    if train_on == "pseudo":
        given = {"source": stores[0], "pseudo": stores[-1]}
    elif train_on == "translated":
        given = {"translated": stores}
    else:
        given = {train_on: stores[0]}
    base = dict(
        model="unet2d.v1",
        train_on=train_on,
        **given,
        hparams={**model_kwargs, **hparams},
        checkpoint_every=3,
        val_every=3,
        log_every=1,
        device="cpu",
        seed=3,
    )
    base.update(overrides)
    return segment_train.SegmentTrainConfig(**base)


def weights(model_dir, which="final"):
    return load_checkpoint(model_dir / f"checkpoint_{which}.pt")["state_dict"]


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def log_without_times(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_same_seed_gives_identical_weights_and_writes_a_model_dir(stores, tmp_path):
    source, _ = stores
    first = segment_train.run(config(source, name="a"), tmp_path / "w")
    segment_train.run(config(source, name="b"), tmp_path / "w")
    a, b = (tmp_path / "w" / "segment" / n for n in ("a", "b"))
    assert same_weights(weights(a), weights(b))
    assert log_without_times(a / "metrics.jsonl") == log_without_times(b / "metrics.jsonl")
    other = segment_train.run(config(source, name="c", seed=4), tmp_path / "w")
    assert not same_weights(weights(a), weights(tmp_path / "w" / "segment" / "c"))
    assert {p.name for p in a.iterdir()} >= {
        "checkpoint_latest.pt",
        "checkpoint_best.pt",
        "checkpoint_final.pt",
        "model.json",
        "metrics.jsonl",
        "manifest.json",
    }
    info = json.loads((a / "model.json").read_text())
    assert info["classes"] == ["organ_a", "organ_b"] and info["num_classes"] == 3
    assert info["dims"] == 2 and info["kwargs"]["in_channels"] == 1
    rows = log_without_times(a / "metrics.jsonl")
    assert [r["step"] for r in rows if "val" in r] == [3, 6]
    assert first.summary["steps"] == 6 and first.summary["best"]["step"] in (3, 6)
    model, _ = load_model(a)
    assert not model.training and other.summary["steps"] == 6


def test_resume_continues_exactly_where_the_killed_run_stopped(stores, tmp_path):
    source, _ = stores
    segment_train.run(config(source, name="whole"), tmp_path / "w")
    with pytest.raises(KeyboardInterrupt):
        segment_train.run(config(source, name="cut"), tmp_path / "w", progress=KillAt(5))
    partial = tmp_path / "w" / "segment" / "cut.partial"
    assert load_checkpoint(partial / "checkpoint_latest.pt")["step"] == 3
    assert not (tmp_path / "w" / "segment" / "cut").exists()
    resumed = segment_train.run(config(source, name="cut", resume=True), tmp_path / "w")
    assert resumed.summary["steps"] == 6
    whole, cut = tmp_path / "w" / "segment" / "whole", tmp_path / "w" / "segment" / "cut"
    assert same_weights(weights(whole), weights(cut))
    assert log_without_times(whole / "metrics.jsonl") == log_without_times(cut / "metrics.jsonl")
    saved = load_checkpoint(cut / "checkpoint_final.pt")
    assert saved["step"] == 6 and saved["training"]["optimizers"]["model"]["state"]


def test_intensity_net_re_renders_training_slices_and_repeats_with_the_seed(
    stores, tmp_path, monkeypatch
):
    from udaseg.data import augment as augment_module

    source, _ = stores
    calls = []
    real = augment_module._intensity_net

    def spy(images, net, sel):
        calls.append(len(sel))
        return real(images, net, sel)

    monkeypatch.setattr(augment_module, "_intensity_net", spy)
    segment_train.run(config(source, name="plain"), tmp_path / "w")
    assert calls == []
    segment_train.run(config(source, name="gin", intensity_net=1.0), tmp_path / "w")
    assert len(calls) >= 3  # most of the 6 batches (p = 0.8 picks the augmented samples)
    segment_train.run(config(source, name="gin2", intensity_net=1.0), tmp_path / "w")
    only = segment_train.run(
        config(source, name="only", intensity_net=1.0, augment=False), tmp_path / "w"
    )
    assert len(calls) >= 3 + 3 + 6  # without spatial augmentation it reaches every batch
    runs = tmp_path / "w" / "segment"
    assert same_weights(weights(runs / "gin"), weights(runs / "gin2"))
    assert not same_weights(weights(runs / "gin"), weights(runs / "plain"))
    assert only.config["intensity_net"] == 1.0


def test_resume_refuses_other_options_and_reruns_are_skipped(stores, tmp_path):
    source, _ = stores
    with pytest.raises(KeyboardInterrupt):
        segment_train.run(config(source, name="r"), tmp_path / "w", progress=KillAt(4))
    with pytest.raises(UdasegError, match="started with other options"):
        segment_train.run(config(source, name="r", resume=True, seed=9), tmp_path / "w")
    segment_train.run(config(source, name="r"), tmp_path / "w")  # no --resume: starts over
    again = segment_train.run(config(source, name="r"), tmp_path / "w")
    assert again.summary["skipped"]


def test_bad_requests_are_refused(stores, tmp_path):
    source, target = stores
    with pytest.raises(UdasegError, match="has no labels"):
        segment_train.run(config(target, train_on="target", name="t"), tmp_path / "w")
    with pytest.raises(UdasegError, match="patch size"):
        segment_train.run(
            config(source, hparams={"steps": 2, "patch_size": [8, 32, 32]}), tmp_path / "w"
        )
    with pytest.raises(UdasegError, match='unknown --set key "lrate"'):
        segment_train.run(config(source, hparams={"lrate": 1.0}), tmp_path / "w")
    with pytest.raises(UdasegError, match='did you mean "unet2d.v1"'):
        segment_train.run(config(source, model="unet2d.v2"), tmp_path / "w")


def test_slice_and_patch_samplers(stores):
    source, _ = stores
    store = Store(source / "store.h5")
    bank = VolumeBank([Source(store, tuple(store.case_ids))], need_labels=True)
    draw = SliceSampler(bank, (32, 32), 6, np.random.default_rng(0), foreground_fraction=0.5)
    images, labels = draw()
    assert images.shape == (6, 1, 32, 32) and labels.shape == (6, 32, 32)
    assert labels.dtype == np.int64 and (labels[:3] > 0).any(axis=(1, 2)).all()
    again = SliceSampler(bank, (32, 32), 6, np.random.default_rng(0), foreground_fraction=0.5)()
    np.testing.assert_array_equal(images, again[0])
    volumes, vlabels = PatchSampler(bank, (4, 16, 16), 2, np.random.default_rng(1))()
    assert volumes.shape == (2, 1, 4, 16, 16) and vlabels.shape == (2, 4, 16, 16)
    window = fit(np.arange(12.0).reshape(3, 4), (5, 2), (-1, 1), fill=-1.0)
    assert window.tolist() == [[-1, -1], [1, 2], [5, 6], [9, 10], [-1, -1]]


def test_schedules():
    assert lr_factor(0, 100, {"schedule": "constant"}) == 1.0
    assert lr_factor(50, 100, {"schedule": "cosine"}) == pytest.approx(0.5)
    assert lr_factor(100, 100, {"schedule": "cosine"}) == pytest.approx(0.0)
    assert lr_factor(50, 100, {"schedule": "poly", "poly_power": 0.9}) == pytest.approx(0.5**0.9)
    assert lr_factor(1, 100, {"schedule": "poly", "warmup_steps": 4}) == pytest.approx(0.5)
    # CycleGAN's: constant for the first half, then a straight line to 0
    linear = {"schedule": "linear"}
    assert [lr_factor(s, 100, linear) for s in (0, 50, 75, 100)] == pytest.approx([1, 1, 0.5, 0])
    late = {"schedule": "linear", "decay_from": 0.8}
    assert lr_factor(80, 100, late) == 1.0 and lr_factor(90, 100, late) == pytest.approx(0.5)


def test_3d_model_trains_on_sub_volumes_and_validates_by_sliding_window(stores, tmp_path):
    source, _ = stores
    run = config(
        source,
        model="dar-unet.v1",
        name="dar",
        model_kwargs=dict(model_spec("dar-unet.v1").tiny),
        hparams={"steps": 2, "batch_size": 1, "patch_size": [4, 16, 16]},
        checkpoint_every=1,
        val_every=0,
    )
    summary = segment_train.run(run, tmp_path / "w").summary
    assert summary["steps"] == 2 and set(summary["last_validation"]["dice"]) == {
        "organ_a",
        "organ_b",
    }
    info = json.loads((tmp_path / "w" / "segment" / "dar" / "model.json").read_text())
    assert info["dims"] == 3 and info["patch_size"] == [4, 16, 16]
    rows = log_without_times(tmp_path / "w" / "segment" / "dar" / "metrics.jsonl")
    assert {"dice", "focal"} <= set(rows[0])  # DAR-UNet's Dice + focal loss on every head


def test_translation_sampling_skips_empty_slices(tmp_path):
    """Constant slices (all background) would drive instance-norm gradients to inf."""
    from udaseg.data.store import StoreWriter

    image = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
    image[1] = -1.0  # an empty slice outside the body
    with StoreWriter(
        tmp_path / "s.h5",
        dataset="d",
        domain="mr",
        modality="MR",
        view="axial",
        classes=["a"],
        labelled=False,
    ) as writer:
        writer.add_case("c", image, None, {})
    store = Store(tmp_path / "s.h5")
    bank = VolumeBank([Source(store, ("c",))], need_labels=False)
    sampler = SliceSampler(bank, (8, 8), 4, np.random.default_rng(0), 0.0, skip_empty=True)
    assert sampler.index == [(0, 0), (0, 2)]
    assert len(SliceSampler(bank, (8, 8), 4, np.random.default_rng(0), 0.0).index) == 3


def test_context_slices_train_a_2_5d_model_that_predict_and_pseudo_label_read(stores, tmp_path):
    from typer.testing import CliRunner

    from udaseg.cli import app
    from udaseg.stages import pseudo_label

    source, target = stores
    work = tmp_path / "w"
    manifest = segment_train.run(config(source, name="ctx", context_slices=1), work)
    model_dir = work / "segment" / "ctx"
    info = json.loads((model_dir / "model.json").read_text())
    assert info["context_slices"] == 1 and info["in_channels"] == 3
    assert info["kwargs"]["in_channels"] == 3 and manifest.config["context_slices"] == 1
    rows = log_without_times(model_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "val" in r] == [3, 6]  # validated on 3-slice stacks
    # the command line needs nothing more than for a 2D model: model.json says how to stack
    args = ["predict", "--model-dir", str(model_dir), "--data", str(source), "--work", str(work),
            "--device", "cpu", "--tta", "--name", "p", "--json"]  # fmt: skip
    with pytest.warns(UserWarning, match="trained without flips"):  # --tta's caution
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cases"] == 4
    assert artifacts.load_manifest(work / "predict" / "p").config["in_channels"] == 3
    labelled = pseudo_label.run(
        pseudo_label.PseudoLabelConfig(model_dir=model_dir, target=target, device="cpu", name="pl"),
        work,
    )
    assert labelled.summary["cases"] >= 1


def test_context_slices_change_the_config_hash(stores, tmp_path):
    source, _ = stores
    work = tmp_path / "w"
    first = segment_train.run(config(source, name="h", context_slices=1), work)
    plain = segment_train.run(config(source, name="h"), work)  # same name: retrained, not reused
    assert not plain.summary["skipped"] and plain.config_hash != first.config_hash
    info = json.loads((work / "segment" / "h" / "model.json").read_text())
    assert info["context_slices"] == 0 and info["in_channels"] == 1


def test_context_slices_are_refused_where_single_slices_are_needed(stores, tmp_path):
    from udaseg.stages import adapt, translate_train

    source, target = stores
    work = tmp_path / "w"
    dar = dict(model_spec("dar-unet.v1").tiny)
    with pytest.raises(UdasegError, match="--context-slices 1: dar-unet.v1 is a 3D model") as err:
        segment_train.run(
            config(source, model="dar-unet.v1", model_kwargs=dar, context_slices=1,
                   hparams={"steps": 1, "batch_size": 1, "patch_size": [4, 16, 16]}),
            work,
        )  # fmt: skip
    assert err.value.exit_code == 2 and not (work / "segment").exists()
    with pytest.raises(UdasegError, match="out of range"):
        config(source, context_slices=-1)
    model_dir = work / "segment" / "ctx"
    segment_train.run(config(source, name="ctx", context_slices=1, hparams={
        "steps": 1, "batch_size": 2, "patch_size": [32, 32]}, val_every=0), work)  # fmt: skip
    # adaptation warm-started from a 2.5D model would feed it single slices
    warm = adapt.AdaptConfig(
        method="advent.v1", source=source, target=target, init=model_dir, model="unet2d.v1",
        hparams={**model_spec("unet2d.v1").tiny, "steps": 1, "patch_size": [32, 32]},
        device="cpu", name="warm",
    )  # fmt: skip
    with pytest.raises(UdasegError, match=f"--init {model_dir}: .*--context-slices 1") as err:
        adapt.run(warm, work)
    assert err.value.exit_code == 2 and not (work / "adapt").exists()
    semantic = translate_train.TranslateTrainConfig(
        method="cyclegan.v1", source=source, target=target, semantic_segmenter=model_dir,
        device="cpu", name="sem",
    )  # fmt: skip
    with pytest.raises(UdasegError, match="--context-slices 1 \\(2.5D input\\)") as err:
        translate_train.run(semantic, work)
    assert err.value.exit_code == 2 and not (work / "translate").exists()
