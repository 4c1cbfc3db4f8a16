"""TFRecord / tf.train.Example reading without TensorFlow.

The synthetic files are written by a tiny encoder in this file (varints, length-delimited fields,
masked CRC32C computed bit by bit) so the reader is checked against an independent writer.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from udaseg.data import tfrecord
from udaseg.data.tfrecord import (
    crc32c,
    iter_tfrecord,
    masked_crc32c,
    parse_example,
    read_sifa_record,
)
from udaseg.errors import UdasegError

SIFA_DIR = SHARED_DATA / "sifa_mmwhs_examples"
SIFA_FILES = ("training_ct", "training_mr", "validation_ct", "validation_mr")

# --- a minimal independent encoder ---------------------------------------------------------------


def _bitwise_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _bitwise_crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> 10-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited (wire type 2) field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int64_feature(values: list[int], packed: bool = True) -> bytes:
    if packed:
        body = _field(1, b"".join(_varint(v) for v in values))
    else:
        body = b"".join(_varint(1 << 3 | 0) + _varint(v) for v in values)
    return _field(3, body)


def _float_feature(values: list[float], packed: bool = True) -> bytes:
    if packed:
        body = _field(1, struct.pack(f"<{len(values)}f", *values))
    else:
        body = b"".join(_varint(1 << 3 | 5) + struct.pack("<f", v) for v in values)
    return _field(2, body)


def _bytes_feature(values: list[bytes]) -> bytes:
    return _field(1, b"".join(_field(1, v) for v in values))


def _example(features: dict[str, bytes]) -> bytes:
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, feature)) for key, feature in features.items()
    )
    return _field(1, entries)


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data))


def _sifa_example(
    image: np.ndarray, label: np.ndarray, packed: bool = True, shape: tuple | None = None
) -> bytes:
    """A SIFA-style Example; ``shape`` overrides the stored dsize (to fake a mismatch)."""
    dsize = shape or image.shape
    features = {
        "data_vol": _bytes_feature([image.astype("<f4").tobytes()]),
        "label_vol": _bytes_feature([label.astype("<f4").tobytes()]),
    }
    for i in range(3):
        features[f"dsize_dim{i}"] = _int64_feature([dsize[i]], packed)
        features[f"lsize_dim{i}"] = _int64_feature([label.shape[i]], packed)
    return _example(features)


@pytest.fixture
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    # H != W so a transposed or Fortran-order reshape would not pass
    return [
        (
            rng.normal(size=(4, 5, 3)).astype(np.float32),
            rng.integers(0, 6, size=(4, 5, 3)).astype(np.float32),
        )
        for _ in range(2)
    ]


@pytest.fixture
def record_file(tmp_path: Path, pairs) -> Path:
    path = tmp_path / "tiny.tfrecords"
    path.write_bytes(
        _record(_sifa_example(*pairs[0], packed=True))
        + _record(_sifa_example(*pairs[1], packed=False))
    )
    return path


# --- CRC -----------------------------------------------------------------------------------------


def test_crc32c_known_vectors():
    # RFC 3720 appendix B.4 and the usual check value
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(b"") == 0


@pytest.mark.parametrize("size", [1, 4095, 65535, 65536, 65536 + 4097, 300_001])
def test_crc32c_parallel_path_matches_bytewise(size: int):
    data = os.urandom(size)
    expected = tfrecord._crc_register(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    assert crc32c(data) == expected


def test_masked_crc_matches_independent_implementation():
    data = os.urandom(300)
    assert masked_crc32c(data) == _masked(data)


# --- framing and Example decoding ---------------------------------------------------------------


def test_sifa_round_trip(record_file: Path, pairs):
    got = read_sifa_record(record_file)
    assert len(got) == 2
    for (image, label), (want_image, want_label) in zip(got, pairs, strict=True):
        assert image.dtype == np.float32 and label.dtype == np.float32
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(label, want_label)
        assert image.flags.writeable


def test_iter_tfrecord_yields_record_bytes(record_file: Path, pairs):
    records = list(iter_tfrecord(record_file))
    assert records[0] == _sifa_example(*pairs[0], packed=True)
    assert list(iter_tfrecord(record_file, verify_crc=False)) == records


def test_packed_and_unpacked_lists_decode():
    example = _example(
        {
            "packed": _int64_feature([1, 300, -2, 2**40], packed=True),
            "unpacked": _int64_feature([1, 300, -2, 2**40], packed=False),
            "floats_packed": _float_feature([0.5, -1.25], packed=True),
            "floats_unpacked": _float_feature([0.5, -1.25], packed=False),
            "strings": _bytes_feature([b"a", b"", b"xyz"]),
            "empty": b"",
        }
    )
    features = parse_example(example)
    for name in ("packed", "unpacked"):
        assert features[name].dtype == np.int64
        np.testing.assert_array_equal(features[name], [1, 300, -2, 2**40])
    for name in ("floats_packed", "floats_unpacked"):
        assert features[name].dtype == np.float32
        np.testing.assert_array_equal(features[name], [0.5, -1.25])
    assert features["strings"] == [b"a", b"", b"xyz"]
    assert features["empty"] == []


def test_unknown_fields_are_skipped():
    # an unknown varint field (9) and fixed64 field (10) inside the Example are ignored
    extra = _varint(9 << 3 | 0) + _varint(7) + _varint(10 << 3 | 1) + bytes(8)
    example = extra + _example({"n": _int64_feature([5])})
    np.testing.assert_array_equal(parse_example(example)["n"], [5])


def test_malformed_example_raises():
    with pytest.raises(UdasegError, match="malformed"):
        parse_example(_field(1, b"")[:1] + b"\x05")  # claims 5 bytes, has none


# --- errors --------------------------------------------------------------------------------------


def test_corrupted_data_crc_names_file_and_record(record_file: Path):
    raw = bytearray(record_file.read_bytes())
    raw[-1] ^= 0xFF  # last byte = data CRC of record 1
    record_file.write_bytes(bytes(raw))
    with pytest.raises(UdasegError, match=r"CRC mismatch.*tiny\.tfrecords.*record 1") as info:
        read_sifa_record(record_file)
    assert info.value.hint
    assert len(read_sifa_record(record_file, verify_crc=False)) == 2


def test_corrupted_payload_detected(record_file: Path):
    raw = bytearray(record_file.read_bytes())
    raw[40] ^= 0x01  # inside record 0's data
    record_file.write_bytes(bytes(raw))
    with pytest.raises(UdasegError, match=r"tiny\.tfrecords.*record 0"):
        list(iter_tfrecord(record_file))


def test_corrupted_length_crc(record_file: Path):
    raw = bytearray(record_file.read_bytes())
    raw[8] ^= 0xFF
    record_file.write_bytes(bytes(raw))
    with pytest.raises(UdasegError, match=r"record 0 length header"):
        list(iter_tfrecord(record_file))


@pytest.mark.parametrize("where", ["length header", "data", "data checksum"])
def test_truncated_file_names_file(record_file: Path, where: str):
    raw = record_file.read_bytes()
    second = 16 + struct.unpack("<Q", raw[:8])[0]  # record 1 starts after record 0's framing
    keep = {"length header": second + 3, "data": second + 20, "data checksum": len(raw) - 2}
    record_file.write_bytes(raw[: keep[where]])
    pattern = rf"truncated TFRecord file .*tiny\.tfrecords.*record 1 ends inside its {where}"
    with pytest.raises(UdasegError, match=pattern):
        list(iter_tfrecord(record_file))
    with pytest.raises(UdasegError, match="truncated"):
        list(iter_tfrecord(record_file, verify_crc=False))


def test_missing_file(tmp_path: Path):
    with pytest.raises(UdasegError, match="not found"):
        list(iter_tfrecord(tmp_path / "absent.tfrecords"))


def test_record_without_sifa_features(tmp_path: Path):
    path = tmp_path / "other.tfrecords"
    path.write_bytes(_record(_example({"image": _bytes_feature([b"\0" * 4])})))
    with pytest.raises(UdasegError, match=r"other\.tfrecords: record 0 .*data_vol"):
        read_sifa_record(path)


def test_size_mismatch(tmp_path: Path, pairs):
    image, label = pairs[0]
    example = _sifa_example(image, label, shape=(4, 4, 3))  # 4x5x3 floats, sizes say 4x4x3
    path = tmp_path / "bad.tfrecords"
    path.write_bytes(_record(example))
    with pytest.raises(UdasegError, match=r"bad\.tfrecords: record 0 feature data_vol has 240"):
        read_sifa_record(path)


# --- the released SIFA records -------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("name", SIFA_FILES)
def test_real_sifa_records(name: str):
    if not SIFA_DIR.is_dir():
        pytest.skip(f"../shared/data is absent: {SIFA_DIR} not found")
    path = SIFA_DIR / f"{name}.tfrecords"
    records = read_sifa_record(path)  # verifies the CRCs
    assert len(records) == 1
    image, label = records[0]
    assert image.shape == label.shape == (256, 256, 3)
    assert image.dtype == np.float32
    # SIFA-normalised intensities, not HU or raw MR
    assert -3.0 < image.min() < 0.0 < image.max() < 5.0
    assert np.isfinite(image).all()
    codes = np.unique(label)
    assert set(codes.tolist()) <= {0, 1, 2, 3, 4, 5} and len(codes) > 1
    # the middle channel is the slice: each neighbour is closer to it than to the other neighbour
    near = (
        np.abs(image[..., 0] - image[..., 1]).mean(),
        np.abs(image[..., 2] - image[..., 1]).mean(),
    )
    assert max(near) < np.abs(image[..., 0] - image[..., 2]).mean()


@pytest.mark.realdata
def test_real_example_npz_matches_training_mr():
    if not SIFA_DIR.is_dir():
        pytest.skip(f"../shared/data is absent: {SIFA_DIR} not found")
    example = np.load(SIFA_DIR / "example.npz")
    image, label = read_sifa_record(SIFA_DIR / "training_mr.tfrecords")[0]
    np.testing.assert_array_equal(image, example["arr_0"])
    np.testing.assert_array_equal(label, example["arr_1"])
