"""The mscmrseg manifest: its settings, and the real MS-CMRSeg cases (from ../shared/data, skipped
where absent) preprocessed the same way round, checked with their anatomy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import require_shared
from udaseg.data.anatomy import disagreements, short_axis_layout
from udaseg.data.manifest import load_manifest
from udaseg.data.splits import make_splits
from udaseg.data.store import Store
from udaseg.errors import UdasegError
from udaseg.stages import preprocess

MYO, LV, RV = 1, 2, 3
# the short-axis view's arrangement: RV on the image left (-W) of the LV and basal to it (+S)
EXPECTED = ("W", -1, 1)


def test_manifest_settings():
    m = load_manifest("mscmrseg")
    assert m.view == "short-axis" and m.class_ids() == {
        "myocardium": 1,
        "left_ventricle": 2,
        "right_ventricle": 3,
    }
    for name in ("c0", "lge"):
        domain = m.domain(name)
        assert domain.modality == "MR" and domain.test_ids == ()
        assert domain.label_map == {
            200: "myocardium",
            500: "left_ventricle",
            600: "right_ventricle",
        }
    assert m.domain("c0").assume_spacing_scale == (0.6, 0.6, 1.0)
    assert m.domain("lge").assume_spacing_scale is None
    assert m.domain("lge").val_ids == ("1", "2", "3", "4", "5")
    assert m.geometry.inplane_size == (128, 128) and m.geometry.crop.method == "none"


def test_lge_validation_is_exactly_patients_1_to_5_and_c0_all_trains():
    m = load_manifest("mscmrseg")
    lge = make_splits(m, m.domain("lge"), [str(i) for i in range(1, 26)])
    assert lge["val"] == ["1", "2", "3", "4", "5"] and lge["test"] == []
    assert lge["train"] == [str(i) for i in range(6, 26)] and lge["val_absent"] == []
    c0 = make_splits(m, m.domain("c0"), [str(i) for i in range(1, 36)])
    assert c0["train"] == [str(i) for i in range(1, 36)] and c0["val"] == []
    partial = make_splits(m, m.domain("lge"), ["2", "7", "9"])
    assert partial["val"] == ["2"] and partial["val_absent"] == ["1", "3", "4", "5"]


def test_val_ids_that_are_also_test_ids_are_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("extends: mscmrseg\ndomains:\n  lge:\n    test_ids: [5, 6]\n")
    with pytest.raises(UdasegError, match=r"cases 5 are in both val_ids and test_ids"):
        load_manifest(path)


@pytest.mark.parametrize("value", ["[0.6, 0.6]", "[0.6, 0, 1]", "[a, b, c]", "0.6"])
def test_bad_assume_spacing_scale_is_refused(value):
    with pytest.raises(UdasegError, match="assume_spacing_scale"):
        load_manifest("mscmrseg", [f"domains.c0.assume_spacing_scale={value}"])


# --- real data ----------------------------------------------------------------------------------

# every released case: 35 C0 and 25 LGE volumes, headers "PSR" and "LSP" in both (about 4 s)
N_CASES = {"c0": 35, "lge": 25}


@pytest.fixture(scope="module")
def real_stores(tmp_path_factory):
    source = require_shared("cardiac_mscmr")
    work = tmp_path_factory.mktemp("mscmrseg") / "w"
    preprocess.run(preprocess.PreprocessConfig(dataset="mscmrseg", raw=source), work)
    folder = work / "preprocessed"
    return {d: Store(folder / f"mscmrseg__{d}" / "store.h5") for d in ("c0", "lge")}, folder


def _layouts(store: Store) -> dict:
    layouts = {}
    for case in store.case_ids:
        x, y, z = store.meta(case)["processed"]["spacing"]
        layouts[f"{store.domain}/{case}"] = short_axis_layout(
            store.label(case), (z, y, x), myo=MYO, lv=LV, rv=RV
        )
    return layouts


@pytest.mark.realdata
def test_real_cases_face_the_same_way_after_preprocessing(real_stores):
    """PSR and LSP headers alike: the RV lies on the image left of the LV and basal to it, and
    the myocardium surrounds the LV, in every case of both sequences."""
    stores, _ = real_stores
    headers = {
        stores[d].meta(c)["original"]["orientation"] for d in stores for c in stores[d].case_ids
    }
    assert headers == {"PSR", "LSP"}
    layouts = {**_layouts(stores["c0"]), **_layouts(stores["lge"])}
    assert len(layouts) == sum(N_CASES.values())
    assert disagreements(layouts, min_myo_around_lv=0.8) == {}
    for case, layout in layouts.items():
        assert layout.key == EXPECTED, (case, layout.describe())


@pytest.mark.realdata
def test_real_cases_grid_classes_and_splits(real_stores):
    stores, folder = real_stores
    for domain, store in stores.items():
        assert sorted(store.case_ids, key=int) == [str(i) for i in range(1, N_CASES[domain] + 1)]
        for case in store.case_ids:
            image, label = store.image(case), store.label(case)
            assert image.shape[1:] == (128, 128) and image.shape == label.shape
            assert -1.0 <= image.min() < image.max() <= 1.0 + 1e-5  # float32 rounding
            assert set(np.unique(label)) == {0, MYO, LV, RV}, (domain, case)
    splits = json.loads((folder / "mscmrseg__lge" / "splits.json").read_text())
    assert splits["val"] == ["1", "2", "3", "4", "5"]
    assert splits["train"] == [str(i) for i in range(6, 26)] and splits["test"] == []
    c0 = json.loads((folder / "mscmrseg__c0" / "splits.json").read_text())
    assert len(c0["train"]) == 35 and c0["val"] == []


@pytest.mark.realdata
def test_c0_hearts_match_their_lge_size_once_the_spacing_is_corrected(real_stores):
    """The C0 headers overstate the in-plane spacing 1/0.6 times; corrected, each patient's
    largest myocardium + LV section in C0 is about as large (mm^2) as in its LGE."""
    stores, _ = real_stores

    def largest_section(store: Store, case: str) -> float:
        x, y, _ = store.meta(case)["processed"]["spacing"]
        heart = np.isin(store.label(case), (MYO, LV))
        return float(heart.sum(axis=(1, 2)).max() * x * y)

    both = sorted(set(stores["c0"].case_ids) & set(stores["lge"].case_ids), key=int)
    assert len(both) == 25
    ratios = [largest_section(stores["c0"], c) / largest_section(stores["lge"], c) for c in both]
    # measured: 0.89-1.16, median 1.04 (C0 is end-diastole); at the header's spacing about 2.8
    assert all(0.8 < r < 1.25 for r in ratios), dict(zip(both, ratios, strict=True))
    assert 0.95 < float(np.median(ratios)) < 1.1
