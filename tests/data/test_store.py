"""The HDF5 store: what udaseg writes is an ordinary gzip-filtered HDF5 file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from udaseg.data.store import Store, StoreWriter, write_volume
from udaseg.errors import UdasegError


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_threaded_chunk_compression_reads_back_with_plain_h5py(tmp_path, dtype):
    volume = (np.random.default_rng(0).normal(size=(5, 17, 23)) * 50).astype(dtype)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        write_volume(f, "x", volume)
    with h5py.File(tmp_path / "v.h5") as f:
        dataset = f["x"]
        assert dataset.compression == "gzip" and dataset.shuffle and dataset.chunks == (1, 17, 23)
        np.testing.assert_array_equal(dataset[()], volume)
        np.testing.assert_array_equal(dataset[3], volume[3])


def test_store_round_trip_and_errors(tmp_path):
    image = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    label = (image > 20).astype(np.uint8)
    with StoreWriter(
        tmp_path / "s.h5",
        dataset="d",
        domain="ct",
        modality="CT",
        view="axial",
        classes=["a"],
        labelled=True,
    ) as writer:
        writer.add_case("b", image, label, {"k": 1})
        writer.add_case("a", image + 1, label, {"k": 2})
        with pytest.raises(UdasegError, match="not unique"):
            writer.add_case("a", image, label, {})
    store = Store(tmp_path / "s.h5")
    assert store.case_ids == ["a", "b"] and store.meta("b") == {"k": 1}
    np.testing.assert_array_equal(store.slice("a", 1)[0], image[1] + 1)
    index = store.index()
    assert index["case"].tolist() == [0, 0, 1, 1] and index["slice"].tolist() == [0, 1, 0, 1]
    assert index["foreground"].tolist() == [0, 19, 0, 19]
    with pytest.raises(UdasegError, match="not in store"):
        store.image("zzz")
    with pytest.raises(UdasegError, match="does not exist"):
        Store(tmp_path / "missing.h5")
