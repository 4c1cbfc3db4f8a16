"""`udaseg pseudo-label` and self-training (`segment-train --train-on pseudo`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.stages.test_segment_train import config as train_config
from udaseg.cli import app
from udaseg.config.report import ReportConfig
from udaseg.data.sampling import IGNORE_INDEX, SliceSampler, Source, VolumeBank, split_cases
from udaseg.data.store import IGNORE_LABEL, Store, foreground_voxels
from udaseg.errors import UdasegError
from udaseg.models.registry import model_spec
from udaseg.stages import preprocess, pseudo_label, segment_train
from udaseg.training.checkpoint import load_checkpoint


@pytest.fixture
def work(tiny_dataset, tmp_path):
    """Preprocessed tiny stores and a source model trained for a few steps."""
    raw, manifest = tiny_dataset
    w = tmp_path / "w"
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=raw), w)
    root = w / "preprocessed"
    segment_train.run(_train_config([root / "tiny__src"], "source", "src-model"), w)
    return w


def _train_config(train, train_on, name, **overrides):
    """test_segment_train's tiny U-Net run on ``train``, as ``name``."""
    settings = {
        "hparams": {"steps": 4, "batch_size": 2, "patch_size": [32, 32], "lr": 1e-3},
        "checkpoint_every": 2,
        "val_every": 0,
        "seed": 1,
        **overrides,
    }
    return train_config(train[0], train=train, train_on=train_on, name=name, **settings)


def _config(w, **overrides):
    base = dict(
        model_dir=w / "segment" / "src-model",
        target=w / "preprocessed" / "tiny__tgt",
        device="cpu",
        name="pl",
    )
    base.update(overrides)
    return pseudo_label.PseudoLabelConfig(**base)


# --- the labelling rule --------------------------------------------------------------------------


def test_confident_voxels_keep_their_class_and_the_rest_are_ignored():
    probabilities = np.zeros((3, 1, 4, 6), np.float32)
    probabilities[0] = 0.95  # background everywhere, sure of it ...
    probabilities[1, 0, 1:3, 1:3] = 0.97  # a sure organ
    probabilities[0, 0, 1:3, 1:3] = 0.03
    probabilities[:, 0, 0, 5] = [0.3, 0.1, 0.6]  # ... except one doubtful class-2 voxel
    label = pseudo_label.pseudo_label(probabilities, 0.9, largest_component=False)
    assert label.dtype == np.uint8 and label.shape == (1, 4, 6)
    assert (label[0, 1:3, 1:3] == 1).all()
    assert label[0, 0, 5] == IGNORE_LABEL
    assert ((label == 0) | (label == 1) | (label == IGNORE_LABEL)).all()
    # threshold 0 keeps every argmax
    assert pseudo_label.pseudo_label(probabilities, 0.0, largest_component=False)[0, 0, 5] == 2


def test_largest_component_turns_detached_islands_into_labelled_background():
    probabilities = np.full((2, 3, 8, 8), 0.0, np.float32)
    probabilities[0] = 1.0
    body = (slice(0, 3), slice(1, 4), slice(1, 4))  # 27 voxels
    island = (slice(1, 2), slice(6, 7), slice(6, 8))  # 2 voxels, far away, doubtful
    for region, p in ((body, 0.99), (island, 0.6)):
        probabilities[1][region] = p
        probabilities[0][region] = 1 - p
    with_lcc = pseudo_label.pseudo_label(probabilities, 0.9, largest_component=True)
    assert (with_lcc[body] == 1).all()
    assert (with_lcc[island] == 0).all()  # unlearned, not ignored
    without = pseudo_label.pseudo_label(probabilities, 0.9, largest_component=False)
    assert (without[island] == IGNORE_LABEL).all()


def test_class_balanced_thresholds_keep_the_surest_portion_of_each_class():
    # background predicted everywhere but one organ block; the background is sure (0.95..0.99)
    # far away and less sure (0.91) where it covers half of the organ the model missed
    probabilities = np.zeros((2, 1, 10, 10), np.float32)
    probabilities[0] = 0.99
    probabilities[0, 0, :, :5] = np.linspace(0.95, 0.99, 10)[:, None]
    probabilities[0, 0, 4:8, 2:6] = 0.91  # the missed half of the organ
    probabilities[1, 0, 4:8, 6:8] = 0.80  # the half the model found
    probabilities[0, 0, 4:8, 6:8] = 0.20
    probabilities[1] = np.where(probabilities[1] == 0, 1 - probabilities[0], probabilities[1])
    label, confidence = pseudo_label.argmax_and_confidence(probabilities, largest_component=False)
    histogram = pseudo_label.confidence_histogram(label, confidence, 2)
    assert histogram.sum(1).tolist() == [92, 8]
    thresholds = pseudo_label.class_thresholds(histogram, 0.5)
    assert 0.91 < thresholds[0] <= 0.99 and thresholds[1] == pytest.approx(0.8, abs=1e-3)
    balanced = pseudo_label.select(label, confidence, thresholds)
    assert (balanced[0, 4:8, 2:6] == IGNORE_LABEL).all()  # doubtful background: no label
    assert (balanced[0, 4:8, 6:8] == 1).all()
    kept_background = int((balanced == 0).sum())
    assert 46 <= kept_background <= 60  # about half of the 92 background voxels (ties kept)
    # one global threshold of 0.9 labels the missed organ half as background
    assert (pseudo_label.pseudo_label(probabilities, 0.9, False)[0, 4:8, 2:6] == 0).all()
    # portion 1 keeps every voxel; a class never predicted gets threshold 1
    assert pseudo_label.class_thresholds(histogram, 1.0)[0] <= 0.91
    assert pseudo_label.class_thresholds(np.zeros((2, 10), np.int64), 0.5).tolist() == [1, 1]


def test_class_balanced_selection_never_ignores_the_largest_component_cut():
    probabilities = np.zeros((2, 3, 8, 8), np.float32)
    probabilities[0] = 0.99
    probabilities[1, :, 1:4, 1:4], probabilities[0, :, 1:4, 1:4] = 0.99, 0.01
    probabilities[1, 1, 6, 6:8], probabilities[0, 1, 6, 6:8] = 0.6, 0.4  # a detached island
    label, confidence = pseudo_label.argmax_and_confidence(probabilities, largest_component=True)
    assert (label[1, 6, 6:8] == 0).all() and np.isinf(confidence[1, 6, 6:8]).all()
    histogram = pseudo_label.confidence_histogram(label, confidence, 2)
    assert histogram[1].sum() == 27 and histogram[0].sum() == label.size - 27 - 2
    thresholds = pseudo_label.class_thresholds(histogram, 0.1)
    assert (pseudo_label.select(label, confidence, thresholds)[1, 6, 6:8] == 0).all()


def test_a_margin_leaves_the_background_near_predicted_organs_unlabelled():
    # a 3x3x3 organ in a sure background; spacing (S, H, W) = (4, 1, 1) mm
    probabilities = np.zeros((2, 5, 16, 16), np.float32)
    probabilities[0] = 0.99
    probabilities[1, 1:4, 5:8, 5:8], probabilities[0, 1:4, 5:8, 5:8] = 0.99, 0.01
    probabilities[1, 1, 14, 14:16], probabilities[0, 1, 14, 14:16] = 0.6, 0.4  # detached island
    label, confidence = pseudo_label.argmax_and_confidence(probabilities, largest_component=True)
    selected = pseudo_label.select(label, confidence, 0.9)
    assert (selected != IGNORE_LABEL).all()  # everything sure: nothing left out without a margin
    out = pseudo_label.unlabel_margin(selected, label, confidence, (4.0, 1.0, 1.0), 2.0)
    assert (out[1:4, 5:8, 5:8] == 1).all()  # the organ keeps its label
    # in-plane: 2 voxels (2 mm) around the organ unlabelled, the third kept
    assert (out[2, 3:5, 6] == IGNORE_LABEL).all() and out[2, 2, 6] == 0
    assert (out[2, 8:10, 6] == IGNORE_LABEL).all() and out[2, 10, 6] == 0
    # through-plane the next slice lies 4 mm away: beyond a 2 mm margin
    assert out[0, 6, 6] == 0 and out[4, 6, 6] == 0
    assert (
        pseudo_label.unlabel_margin(selected, label, confidence, (4.0, 1.0, 1.0), 4.0)[0, 6, 6]
        == IGNORE_LABEL
    )
    # the largest-component cut stays labelled background, and far background keeps its label
    assert (out[1, 14, 14:16] == 0).all() and out[0, 0, 0] == 0
    # per slice: 12 voxels at 1 mm, 12 at 2 mm, 4 diagonal at 1.41 mm (those at 2.24 and 2.83 kept)
    assert (out == IGNORE_LABEL).sum() == 3 * 28
    # off, or nothing predicted: unchanged
    assert pseudo_label.unlabel_margin(selected, label, confidence, (1, 1, 1), 0.0) is selected
    empty = np.zeros_like(label)
    assert (pseudo_label.unlabel_margin(empty, empty, confidence, (1, 1, 1), 5.0) == 0).all()


def test_ignored_voxels_are_not_foreground_and_reach_the_loss_as_its_ignore_index(tmp_path):
    from udaseg.data.store import StoreWriter

    label = np.zeros((2, 8, 8), np.uint8)
    label[0, :4] = IGNORE_LABEL
    label[1, 2:4, 2:4] = 1
    assert foreground_voxels(label).tolist() == [0, 4]
    path = tmp_path / "s.h5"
    with StoreWriter(
        path, dataset="d", domain="t", modality="MR", view="axial", classes=["a"], labelled=True
    ) as writer:
        writer.add_case("c", np.ones((2, 8, 8), np.float32), label, {})
    store = Store(path)
    bank = VolumeBank([Source(store, ("c",))], need_labels=True)
    sampler = SliceSampler(bank, (8, 8), 8, np.random.default_rng(0), foreground_fraction=0.0)
    _, labels = sampler()
    assert set(np.unique(labels).tolist()) <= {0, 1, IGNORE_INDEX}
    assert (labels == IGNORE_INDEX).any()


# --- the stage -----------------------------------------------------------------------------------


def test_pseudo_label_writes_a_store_of_the_target_training_cases(work, monkeypatch):
    target = work / "preprocessed" / "tiny__tgt"
    tgt = Store(target / "store.h5")
    train = split_cases(target, "train", tgt)

    def no_target_labels(self, case_id):
        raise AssertionError("pseudo-label must not read the target's labels")

    monkeypatch.setattr(Store, "label", no_target_labels)
    manifest = pseudo_label.run(_config(work, threshold=0.0), work)
    monkeypatch.undo()
    out = work / "pseudo" / "pl"
    assert manifest.stage == "pseudo-label" and manifest.summary["cases"] == len(train)
    store = Store(out / "store.h5")
    assert store.labelled and store.case_ids == sorted(train)
    assert (store.dataset, store.domain, store.classes) == (tgt.dataset, tgt.domain, tgt.classes)
    for case in store.case_ids:
        np.testing.assert_array_equal(store.image(case), tgt.image(case))
        label = store.label(case)
        assert set(np.unique(label).tolist()) <= {0, 1, 2, IGNORE_LABEL}
        record = store.meta(case)["pseudo_label"]
        assert record["threshold"] == 0.0 and record["kept"] == 1.0  # threshold 0 keeps all
    splits = json.loads((out / "splits.json").read_text())
    assert splits["train"] == train and splits["val"] == [] and splits["test"] == []
    assert manifest.summary["kept"] == 1.0
    voxels = manifest.summary["voxels"]
    assert set(voxels) == {"background", *tgt.classes}
    assert sum(voxels.values()) == sum(tgt.image(c).size for c in train)
    # current: skipped; a stricter threshold leaves the doubtful voxels out
    assert pseudo_label.run(_config(work, threshold=0.0), work).summary["skipped"]
    stricter = pseudo_label.run(_config(work, threshold=0.6, name="pl60"), work)
    assert stricter.summary["kept"] < 1.0
    labels = Store(work / "pseudo" / "pl60" / "store.h5").label(train[0])
    assert (labels == IGNORE_LABEL).any()


def test_class_balanced_pseudo_labels_keep_the_asked_portion_of_each_class(work):
    manifest = pseudo_label.run(_config(work, portion=0.5, name="cb"), work)
    summary = manifest.summary
    assert 0.3 < summary["kept"] < 0.7  # about half of each class (ties at bin edges kept)
    assert list(summary["thresholds"]) == ["background", "organ_a", "organ_b"]
    assert manifest.config["portion"] == 0.5
    assert not (work / "pseudo" / "cb" / "scratch").exists()
    store = Store(work / "pseudo" / "cb" / "store.h5")
    record = store.meta(store.case_ids[0])["pseudo_label"]
    assert record["portion"] == 0.5 and record["thresholds"] == summary["thresholds"]
    # a thresholded run records that no portion was asked for
    assert pseudo_label.run(_config(work, threshold=0.6), work).config["portion"] is None
    with pytest.raises(UdasegError, match="--portion 0"):
        pseudo_label.run(_config(work, portion=0.0, name="cb0"), work)


def test_a_margin_is_recorded_and_leaves_more_voxels_unlabelled(work, monkeypatch):
    import udaseg.inference

    def organ_in_the_middle(network, image, **options):
        # the few-step test model may predict no organ at all; a sure one makes the margin bite
        probabilities = np.zeros((3, *image.shape), np.float32)
        probabilities[0] = 1.0
        s, h, w = image.shape
        probabilities[:, :, h // 4 : h // 2, w // 4 : w // 2] = np.array([0, 1, 0])[
            :, None, None, None
        ]
        return probabilities

    monkeypatch.setattr(udaseg.inference, "predict_volume", organ_in_the_middle)
    plain = pseudo_label.run(_config(work, threshold=0.0), work)
    margin = pseudo_label.run(_config(work, threshold=0.0, margin=3.0, name="m3"), work)
    assert margin.config["margin"] == 3.0 and plain.config["margin"] == 0.0
    assert margin.summary["margin_mm"] == 3.0 and margin.summary["kept"] < plain.summary["kept"]
    store = Store(work / "pseudo" / "m3" / "store.h5")
    assert store.meta(store.case_ids[0])["pseudo_label"]["margin_mm"] == 3.0
    with pytest.raises(UdasegError, match="--margin -1"):
        pseudo_label.run(_config(work, margin=-1.0, name="mneg"), work)


def test_the_report_draws_the_pseudo_labelled_store(work):
    from udaseg.stages import report

    pseudo_label.run(_config(work, threshold=0.6), work)
    report.run(ReportConfig(), work)
    text = (work / "report" / "report.md").read_text()
    data = text[text.index("## Data") : text.index("## Translator")]
    assert "Pseudo-labelled target stores" in data and "pseudo/pl*" in data


def test_bad_requests_are_refused(work):
    with pytest.raises(UdasegError, match="--threshold 1.5"):
        pseudo_label.run(_config(work, threshold=1.5), work)
    with pytest.raises(UdasegError, match="split 'test' .* holds no cases"):
        pseudo_label.run(_config(work, split="test"), work)
    with pytest.raises(UdasegError, match="does not exist"):
        pseudo_label.run(_config(work, model_dir=work / "segment" / "nope"), work)


def test_self_training_learns_from_source_and_pseudo_labels_and_validates_on_the_source(work):
    pseudo_label.run(_config(work, threshold=0.0), work)
    source = work / "preprocessed" / "tiny__src"
    pseudo = work / "pseudo" / "pl"
    manifest = segment_train.run(
        _train_config([source, pseudo], "pseudo", "student", val_every=2), work
    )
    out = work / "segment" / "student"
    assert manifest.summary["train_on"] == "pseudo" and manifest.summary["steps"] == 4
    assert set(manifest.inputs) == {"store0", "store1"}
    assert manifest.inputs["store1"]["stage"] == "pseudo-label"
    assert (out / "checkpoint_best.pt").is_file()  # picked on the source's val cases
    again = segment_train.run(
        _train_config([source, pseudo], "pseudo", "student2", val_every=2), work
    )
    a = load_checkpoint(out / "checkpoint_final.pt")["state_dict"]
    b = load_checkpoint(work / "segment" / "student2" / "checkpoint_final.pt")["state_dict"]
    assert again.summary["steps"] == 4 and all((a[k] == b[k]).all() for k in a)


def test_balanced_batches_take_an_equal_share_from_each_store(tmp_path):
    from udaseg.data.sampling import BalancedSampler
    from udaseg.data.store import StoreWriter

    banks = []
    for value, slices in ((1.0, 2), (2.0, 30)):  # a small store beside one 15 times larger
        path = tmp_path / f"s{int(value)}.h5"
        with StoreWriter(
            path, dataset="d", domain="t", modality="MR", view="axial", classes=["a"], labelled=True
        ) as writer:
            writer.add_case(
                "c",
                np.full((slices, 8, 8), value, np.float32),
                np.zeros((slices, 8, 8), np.uint8),
                {},
            )
        banks.append(VolumeBank([Source(Store(path), ("c",))], need_labels=True))
    rng = np.random.default_rng(0)
    pooled = SliceSampler(
        VolumeBank([Source(b.entries[0][0], ("c",)) for b in banks], need_labels=True),
        (8, 8),
        8,
        rng,
    )
    balanced = BalancedSampler([SliceSampler(b, (8, 8), 4, rng) for b in banks])
    images, labels = balanced()
    assert images.shape == (8, 1, 8, 8) and labels.shape == (8, 8, 8)
    assert images[:4].max() == 1.0 and images[4:].min() == 2.0
    small = sum(int((pooled()[0][:, 0, 0, 0] == 1.0).sum()) for _ in range(20))
    assert small < 40  # pooled: the small store gets about 1 in 16 slices, not half


def test_self_training_with_balanced_stores_records_it_and_needs_a_share_for_each(work):
    pseudo_label.run(_config(work, threshold=0.0), work)
    train = [work / "preprocessed" / "tiny__src", work / "pseudo" / "pl"]
    manifest = segment_train.run(
        _train_config(train, "pseudo", "balanced", balance_stores=True), work
    )
    assert manifest.config["balance_stores"] is True and manifest.summary["steps"] == 4
    pooled = segment_train.run(_train_config(train, "pseudo", "pooled"), work)
    assert pooled.config["balance_stores"] is False
    one = dict(_train_config(train, "pseudo", "b1", balance_stores=True).hparams, batch_size=1)
    with pytest.raises(UdasegError, match="a batch of 1 cannot take a share"):
        segment_train.run(
            _train_config(train, "pseudo", "b1", balance_stores=True, hparams=one), work
        )


def test_cli_pseudo_label_then_train_on_pseudo(work):
    runner = CliRunner()
    target = work / "preprocessed" / "tiny__tgt"
    result = runner.invoke(
        app,
        [
            "pseudo-label",
            "--model-dir",
            str(work / "segment" / "src-model"),
            "--target",
            str(target),
            "--work",
            str(work),
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run"] == "src-model__train" and summary["cases"] >= 1
    tiny = model_spec("unet2d.v1").tiny
    args = [
        "segment-train",
        "--train-on",
        "pseudo",
        "--work",
        str(work),
        "--set",
        "steps=2",
        "--set",
        "batch_size=2",
        "--set",
        "patch_size=32,32",
        "--device",
        "cpu",
        *[a for k, v in tiny.items() for a in ("--set", f"{k}={v}")],
    ]
    missing = runner.invoke(app, args)
    assert isinstance(missing.exception, UdasegError) and missing.exception.exit_code == 2
    assert "--train-on pseudo needs --pseudo" in str(missing.exception)
    result = runner.invoke(
        app,
        [
            *args,
            "--pseudo",
            summary["output"],
            "--source",
            str(work / "preprocessed" / "tiny__src"),
            "--name",
            "cli-student",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train_on"] == "pseudo"
