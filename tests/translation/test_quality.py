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
