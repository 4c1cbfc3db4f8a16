"""Translation quality: reading a translate run that is still training, and the measures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from udaseg.errors import UdasegError
from udaseg.translation.io import open_unfinished_run
from udaseg.translation.quality import edge_ratio, organ_intensities


def unfinished_workspace(tmp_path: Path) -> Path:
    """W/translate/run.partial/model.json and the two stores it names, as translate train and
    preprocess lay them out."""
    run = tmp_path / "translate" / "run.partial"
    run.mkdir(parents=True)
    info = {
        "name": "cyclegan.v1",
        "has_style_codes": False,
        "source": {"dataset": "abdo", "domain": "ct"},
        "target": {"dataset": "abdo", "domain": "mr"},
    }
    (run / "model.json").write_text(json.dumps(info))
    for domain in ("ct", "mr"):
        store = tmp_path / "preprocessed" / f"abdo__{domain}"
        store.mkdir(parents=True)
        (store / "store.h5").write_bytes(b"")
    return tmp_path


def test_an_unfinished_run_is_read_from_its_partial_folder_with_the_workspace_stores(tmp_path):
    work = unfinished_workspace(tmp_path)
    for given in (work / "translate" / "run", work / "translate" / "run.partial"):
        run = open_unfinished_run(given)
        assert run.directory == work / "translate" / "run.partial"
        assert run.source.resolve() == (work / "preprocessed" / "abdo__ct").resolve()
        assert run.target.resolve() == (work / "preprocessed" / "abdo__mr").resolve()
        assert run.has_style_codes is False


def test_an_unfinished_run_takes_named_stores_and_refuses_missing_ones(tmp_path):
    work = unfinished_workspace(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "store.h5").write_bytes(b"")
    run = open_unfinished_run(work / "translate" / "run", target_store=elsewhere)
    assert run.target == elsewhere
    with pytest.raises(UdasegError, match="target store of run.partial") as refused:
        open_unfinished_run(work / "translate" / "run", target_store=tmp_path / "no")
    assert "--target-store" in refused.value.hint
    with pytest.raises(UdasegError, match="no model.json"):
        open_unfinished_run(tmp_path / "translate" / "other")


def test_an_edge_on_the_label_contour_raises_the_edge_ratio():
    label = np.zeros((2, 16, 16), np.uint8)
    label[:, 4:12, 4:12] = 1
    sharp = np.where(label == 1, 1.0, -1.0).astype(np.float32)
    flat = np.zeros_like(sharp)
    flat[:, :, :8] = 1.0  # an edge, but not where the label's boundary is
    assert edge_ratio([sharp], [label], 1) > 1.5
    assert edge_ratio([flat], [label], 1) < edge_ratio([sharp], [label], 1)


def test_organ_intensities_are_a_repeatable_subset():
    rng = np.random.default_rng(0)
    volumes = [rng.uniform(-1, 1, (4, 8, 8)).astype(np.float32) for _ in range(2)]
    labels = [np.ones((4, 8, 8), np.uint8), np.zeros((4, 8, 8), np.uint8)]
    every = organ_intensities(volumes, labels, 1)
    assert len(every) == 4 * 8 * 8
    np.testing.assert_array_equal(np.sort(every), np.sort(volumes[0].ravel()))
    some = organ_intensities(volumes, labels, 1, limit=10)
    assert len(some) == 10
    np.testing.assert_array_equal(some, organ_intensities(volumes, labels, 1, limit=10))


# --- the measures for every kind of translator (one-way cut.v1 too) ------------------------------


class LabelledStore:
    """What the measures read of a labelled store: ``classes``, ``case_ids``, ``image(case)``
    (S, H, W) float32 in [-1, 1] and ``label(case)`` (S, H, W) uint8; two organs per slice,
    their tones set by ``tones`` (organ a, organ b, background)."""

    def __init__(self, tones: tuple[float, float, float], seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.classes, self.case_ids, self._cases = ["organ_a", "organ_b"], ["c0", "c1"], {}
        for case in self.case_ids:
            label = np.zeros((3, 32, 32), np.uint8)
            for k in range(3):
                top, left = rng.integers(2, 10, size=2)
                label[k, top : top + 10, left : left + 10] = 1
                label[k, top + 14 : top + 20, left + 12 : left + 20] = 2
            image = np.choose(label, [tones[2], tones[0], tones[1]]).astype(np.float32)
            image += rng.normal(0, 0.05, image.shape).astype(np.float32)
            self._cases[case] = (image, label)

    def image(self, case: str) -> np.ndarray:
        return self._cases[case][0]

    def label(self, case: str) -> np.ndarray:
        return self._cases[case][1]


def tiny_segmenter(seed: int = 0) -> tuple:
    """An untrained tiny unet2d.v1 with the model.json keys the measures read: an instrument
    whose readings are numbers, which is all these tests need."""
    import torch

    from udaseg.models.registry import create_model, model_spec

    torch.manual_seed(seed)
    kwargs = {**model_spec("unet2d.v1").tiny, "in_channels": 1, "num_classes": 3}
    return create_model("unet2d.v1", **kwargs).eval(), {"dims": 2, "patch_size": [32, 32]}


def cut_report(bidirectional: bool) -> dict:
    """direction_report of a tiny, untrained cut.v1 on two labelled toy stores."""
    import torch

    from udaseg.translation.quality import direction_report
    from udaseg.translation.registry import create_translator, translator_spec

    torch.manual_seed(0)
    kwargs = {**translator_spec("cut.v1").tiny, "bidirectional": bidirectional}
    translator = create_translator("cut.v1", **kwargs).eval()
    source, target = LabelledStore((0.8, 0.3, -0.9), 1), LabelledStore((-0.5, 0.6, 0.9), 2)
    own, foreign = tiny_segmenter(0), tiny_segmenter(1)
    return direction_report(translator, source, target, ["c0"], own, foreign, back=False)


def test_a_one_way_translator_gets_every_measure_but_the_cycle():
    report = cut_report(bidirectional=False)
    assert "does not apply" in report["cycle"] and "bidirectional=true" in report["cycle"]
    assert "dice_cycle" not in report and "dice_cycle" not in report["per_case"][0]
    assert 0 <= report["other_model_on_translated"] <= 1
    for organ in ("organ_a", "organ_b"):
        assert set(report["organ_dice"][organ]) == {"original"}
        assert set(report["wasserstein"][organ]) == {"before", "after"}
        assert np.isfinite(report["edge_ratio"][organ]["translated"])


def test_a_two_way_cut_gets_the_cycle_measured_and_one_way_refuses_the_reverse():
    report = cut_report(bidirectional=True)
    assert report["cycle"] is None and 0 <= report["dice_cycle"] <= 1
    assert set(report["organ_dice"]["organ_a"]) == {"original", "cycle"}
    import torch

    from udaseg.translation.quality import direction_report
    from udaseg.translation.registry import create_translator, translator_spec

    torch.manual_seed(0)
    one_way = create_translator("cut.v1", **translator_spec("cut.v1").tiny)
    store = LabelledStore((0.8, 0.3, -0.9), 1)
    with pytest.raises(UdasegError, match="one-way"):
        direction_report(one_way, store, store, ["c0"], tiny_segmenter(), None, back=True)
