"""Dataset manifests: every built-in one loads; mistakes are caught with 'did you mean'."""

from __future__ import annotations

import pytest

from udaseg.data.manifest import builtin_names, load_manifest
from udaseg.errors import UdasegError


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_manifests_load(name):
    manifest = load_manifest(name)
    assert manifest.classes and manifest.domains
    for domain in manifest.domains.values():
        if domain.labels and domain.reader != "dicom-png":
            mapped = set(domain.label_map.values()) - {"background"}
            assert mapped <= set(manifest.classes)


def test_builtin_set_is_complete():
    assert set(builtin_names()) >= {
        "mmwhs",
        "chaos",
        "btcv",
        "abdominal-normalized",
        "sifa-tfrecords",
        "brats",
        "crossmoda",
        "mscmrseg",
        "custom",
    }


def test_mmwhs_codes_and_sifa_split():
    m = load_manifest("mmwhs")
    ct = m.domain("ct")
    assert m.class_ids() == {
        "myocardium": 1,
        "left_atrium": 2,
        "left_ventricle": 3,
        "ascending_aorta": 4,
    }
    assert ct.label_map[205] == "myocardium" and ct.label_map[820] == "ascending_aorta"
    assert {ct.label_map[c] for c in (550, 600, 850)} == {"background"}
    assert ct.test_ids == ("1003", "1008", "1014", "1019")
    assert m.domain("mr").test_ids == ("1007", "1009", "1018", "1019")
    assert m.view == "coronal"


def test_chaos_ranges_btcv_codes_and_brats_regions():
    chaos = load_manifest("chaos")
    assert chaos.domain("mr").label_ranges["spleen"] == (240, 255)
    assert chaos.domain("mr").test_ids == ("1", "13", "32", "38")
    btcv = load_manifest("btcv").domain("ct")
    assert btcv.label_map[6] == "liver" and btcv.label_map[1] == "spleen"
    assert btcv.test_ids == ("0001", "0009", "0030", "0032", "0033", "0039")
    brats = load_manifest("brats")
    assert brats.evaluation_classes() == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}


def test_unknown_key_names_place_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("extends: custom\ndomains:\n  source:\n    lable_map: {1: foreground}\n")
    with pytest.raises(
        UdasegError, match=r"domains\.source\.lable_map.*did you mean \"label_map\""
    ):
        load_manifest(path)
    path.write_text("extends: custom\ngeometri: {}\n")
    with pytest.raises(UdasegError, match='did you mean "geometry"'):
        load_manifest(path)


def test_unknown_dataset_and_bad_values():
    with pytest.raises(UdasegError, match='unknown dataset "mmwh".*did you mean "mmwhs"'):
        load_manifest("mmwh")
    with pytest.raises(UdasegError, match="view 'axal'.*did you mean \"axial\""):
        load_manifest("custom", ["view=axal"])
    with pytest.raises(UdasegError, match="not mapped|label_map\\[1\\]"):
        load_manifest("custom", ["domains.source.label_map={1: lung}"])


def test_extends_and_overrides_merge(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: abdominal-normalized\nname: mine\ngeometry: {inplane_mm: 2.5}\n")
    m = load_manifest(path, ["geometry.inplane_size=[64, 64]"])
    assert m.name == "mine"
    assert m.geometry.inplane_mm == 2.5 and m.geometry.inplane_size == (64, 64)
    assert m.geometry.crop.method == "body"  # inherited
    assert m.domain("ct").assume_orientation == "LAS"
