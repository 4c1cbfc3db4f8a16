"""The CHAOS layout (DICOM series + per-slice PNG masks) through `udaseg preprocess chaos`."""

from __future__ import annotations

import numpy as np

from tests.data.test_dicom import write_png, write_series
from udaseg.data.store import Store
from udaseg.stages import preprocess

# slice k (by position along the normal) carries this instance number; file names are shuffled
INSTANCES = [3, 1, 6, 2, 5, 4]


def write_chaos_case(raw, case: int) -> None:
    series = raw / "MR" / str(case) / "T2SPIR" / "DICOM_anon"
    names = [f"IMG-0002-{n:05d}.dcm" for n in (4, 9, 1, 7, 2, 5)]  # unrelated to position
    write_series(series, [2.0 * k for k in range(6)], names=names, instances=INSTANCES)
    ground = raw / "MR" / str(case) / "T2SPIR" / "Ground"
    ground.mkdir(parents=True)
    for instance in range(1, 7):
        grey = np.zeros((16, 16), np.uint8)
        # odd instances: liver (CHAOS grey 63), even: spleen (252), with antialiasing-like noise
        grey[4:10, 3:9] = 63 if instance % 2 else 252
        grey[4, 3] = 60 if instance % 2 else 245
        write_png(ground / f"IMG-0002-{instance:05d}.png", grey)


def test_chaos_mr_slices_and_masks_line_up_by_position_and_instance(tmp_path):
    raw = tmp_path / "raw"
    for case in (1, 2):
        write_chaos_case(raw, case)
    config = preprocess.PreprocessConfig(
        dataset="chaos",
        raw=raw,
        domain=["mr"],
        overrides=[
            "geometry.inplane_mm=null",
            "geometry.inplane_size=null",
            "geometry.crop={method: none}",
            "domains.mr.intensity={method: none}",
        ],
    )
    result = preprocess.run(config, tmp_path / "w")[0]
    assert result.summary["cases"] == 2
    store = Store(tmp_path / "w" / "preprocessed" / "chaos__mr" / "store.h5")
    image, label = store.image("2"), store.label("2")
    assert image.shape == (6, 16, 16)
    # write_series puts value 100 * k in the slice at position k: ascending = position order
    assert image[:, 8, 8].tolist() == [100.0 * k for k in range(6)]
    expected = [1 if instance % 2 else 4 for instance in INSTANCES]  # liver 1, spleen 4
    assert [int(np.max(label[k])) for k in range(6)] == expected
    assert json_split(tmp_path)["test"] == ["1"]  # CHAOS MR test ids include 1


def json_split(tmp_path):
    import json

    return json.loads((tmp_path / "w" / "preprocessed" / "chaos__mr" / "splits.json").read_text())
