"""Read TFRecord files (SIFA's released MMWHS slices) without TensorFlow or protobuf.

A TFRecord file is a plain sequence of records, each framed as::

    uint64 length            (little-endian)
    uint32 masked_crc32c(length bytes)
    bytes  data[length]
    uint32 masked_crc32c(data)

where ``masked_crc(c) = ((c >> 15) | (c << 17)) + 0xA282EAD8 (mod 2**32)`` and CRC32C is the
Castagnoli CRC (reflected polynomial 0x82F63B78). Each SIFA record's data is a serialized
``tf.train.Example``; :func:`parse_example` decodes it with a minimal protobuf wire-format reader.

SIFA record layout (verified on the released ``{training,validation}_{ct,mr}.tfrecords``: the
images show coherent cardiac anatomy and the label contours sit on the structures only when read
this way; ``example.npz`` shipped next to them equals the ``training_mr`` record bit for bit):

* ``data_vol``: raw little-endian float32 bytes of a (256, 256, 3) array in C order (row, column,
  channel), i.e. ``np.frombuffer(..., "<f4").reshape(dsize_dim0, dsize_dim1, dsize_dim2)``, the same
  as SIFA's ``tf.reshape``. Intensities are already normalised by SIFA's preprocessing (about
  -1.4 .. 2.7 on the released examples, constant-valued padding at the borders), not Hounsfield
  units or raw MR values.
* ``label_vol``: the same framing and shape (``lsize_dim0..2``), float32 integer class codes
  0 background, 1 MYO, 2 LAC, 3 LVC, 4 AA (SIFA evaluates these four); 5 also occurs (another
  structure SIFA does not evaluate). The three label channels are identical in the released data.
* Channel 1 (the middle one) is the slice itself; channels 0 and 2 are its two neighbouring
  slices (on the examples channels 0 and 2 differ from each other about 1.5-1.8x more than
  either differs from channel 1). SIFA feeds all three image channels to the network and uses
  ``label_vol[..., 1]`` as the target.
* Other features present (``mask_vol``, ``mask_scale``, ``bias_dim0..2``) are not used by SIFA's
  training and are ignored here; :func:`parse_example` still returns them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from udaseg.errors import UdasegError

__all__ = [
    "crc32c",
    "masked_crc32c",
    "iter_tfrecord",
    "parse_example",
    "read_sifa_record",
]

_CASTAGNOLI = 0x82F63B78  # CRC-32C polynomial, bit-reversed (the table below is LSB-first)
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
# inputs shorter than this are not worth the numpy set-up of the lane-parallel CRC
_PARALLEL_MIN_BYTES = 1 << 16
_LANES = 1 << 12


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()
_TABLE_NP = np.array(_TABLE, dtype=np.uint32)


def _crc_register(data: bytes | memoryview, register: int) -> int:
    """Feed ``data`` through the CRC register byte by byte (no initial or final inversion)."""
    table = _TABLE
    for byte in bytes(data):
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


# --- lane-parallel CRC -------------------------------------------------------------------------
# The register update r' = T[(r ^ x) & 0xFF] ^ (r >> 8) is linear over GF(2) in (r, x), so
# reg(A + B, r0) = Z^len(B)(reg(A, r0)) ^ reg(B, 0), where Z is "feed one zero byte". That lets us
# run many equal-length chunks through the table at once with numpy and then fold the chunk
# registers together with precomputed Z^n operators (a 32x32 bit matrix stored as 32 columns).


def _apply(operator: np.ndarray, registers: np.ndarray) -> np.ndarray:
    """Apply a GF(2) linear map (32 uint32 columns) to an array of registers."""
    out = np.zeros_like(registers)
    for bit in range(32):
        out ^= np.where((registers >> np.uint32(bit)) & np.uint32(1), operator[bit], np.uint32(0))
    return out


def _zero_feed_operator(n_bytes: int) -> np.ndarray:
    """Z^n as 32 columns: what feeding ``n_bytes`` zero bytes does to each basis register."""
    basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
    power = _TABLE_NP[basis & np.uint32(0xFF)] ^ (basis >> np.uint32(8))  # Z^1
    result = basis.copy()  # identity
    while n_bytes:
        if n_bytes & 1:
            result = _apply(power, result)
        power = _apply(power, power)
        n_bytes >>= 1
    return result


@lru_cache(maxsize=32)
def _zero_feed_cached(n_bytes: int) -> np.ndarray:
    return _zero_feed_operator(n_bytes)


def _crc_register_parallel(data: bytes | memoryview, register: int) -> int:
    """Same as :func:`_crc_register`, computed over ``_LANES`` chunks in lockstep."""
    chunk = len(data) // _LANES
    body = np.frombuffer(data, dtype=np.uint8, count=chunk * _LANES).reshape(_LANES, chunk)
    lanes = np.zeros(_LANES, dtype=np.uint32)
    lanes[0] = register
    for column in body.T:
        lanes = _TABLE_NP[(lanes ^ column) & np.uint32(0xFF)] ^ (lanes >> np.uint32(8))
    # fold neighbouring lanes pairwise: left lane advanced over the right lane's bytes, XOR right
    span = chunk
    while len(lanes) > 1:
        lanes = _apply(_zero_feed_cached(span), lanes[0::2]) ^ lanes[1::2]
        span *= 2
    return _crc_register(memoryview(data)[chunk * _LANES :], int(lanes[0]))


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``, as used by TFRecord framing; ``crc32c(b"123456789")``
    is 0xE3069283."""
    if len(data) >= _PARALLEL_MIN_BYTES:
        return _crc_register_parallel(data, _U32) ^ _U32
    return _crc_register(data, _U32) ^ _U32


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC: rotate the CRC right by 15 bits and add a constant (mod 2**32)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


# --- record framing ----------------------------------------------------------------------------


def _truncated(path: Path, index: int, what: str) -> UdasegError:
    return UdasegError(
        f"truncated TFRecord file {path}: record {index} ends inside its {what}",
        hint="the file is incomplete (interrupted download or copy); fetch it again",
        path=path,
    )


def _check_crc(path: Path, index: int, what: str, data: bytes, stored: int) -> None:
    if masked_crc32c(data) != stored:
        raise UdasegError(
            f"CRC mismatch in TFRecord file {path}: record {index} {what} is corrupted",
            hint="the file is damaged; fetch it again (or pass verify_crc=False to skip the check)",
            path=path,
        )


def iter_tfrecord(path: str | Path, verify_crc: bool = True) -> Iterator[bytes]:
    """Yield the data of each record in a TFRecord file, in file order.

    Args:
        path: the ``.tfrecords`` file (uncompressed; GZIP/ZLIB TFRecords are not supported).
        verify_crc: check both masked CRC32C checksums of every record. Costs about 8 ms per MB
            (numpy, lane-parallel); turn off for speed on trusted files.

    Raises:
        UdasegError: the file is missing, a record is truncated, or a CRC does not match
            (the message names the file and the 0-based record index).
    """
    path = Path(path)
    if not path.is_file():
        raise UdasegError(
            f"TFRecord file not found: {path}",
            hint="check the path; SIFA's MMWHS records end in .tfrecords",
            path=path,
        )
    size = path.stat().st_size
    with path.open("rb") as handle:
        index = 0
        while header := handle.read(12):
            if len(header) < 12:
                raise _truncated(path, index, "length header")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if verify_crc:
                _check_crc(path, index, "length header", length_bytes, length_crc)
            (length,) = struct.unpack("<Q", length_bytes)
            remaining = size - handle.tell()
            # check before reading: a corrupt (unverified) length could ask for exabytes
            if length > remaining:
                raise _truncated(path, index, f"data ({remaining} of {length} bytes)")
            data = handle.read(length)
            footer = handle.read(4)
            if len(footer) < 4:
                raise _truncated(path, index, "data checksum")
            if verify_crc:
                _check_crc(path, index, "data", data, struct.unpack("<I", footer)[0])
            yield data
            index += 1


# --- protobuf wire format ------------------------------------------------------------------------
# Only what tf.train.Example needs: varints (wire type 0), 64-bit (1), length-delimited (2) and
# 32-bit (5) fields. Groups (3, 4) are obsolete and never written by TensorFlow.


class _WireError(ValueError):
    """Malformed protobuf bytes (turned into a UdasegError by the public functions)."""


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _WireError("varint runs past the end of the message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 64:
            raise _WireError("varint longer than 10 bytes")


def _iter_fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) for each field of one message.

    The value is an int for wire types 0, 1 and 5 (fixed-width fields as their unsigned
    little-endian integer) and a memoryview of the payload for wire type 2.
    """
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise _WireError(f"fixed-width field {number} runs past the end of the message")
            value = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise _WireError(f"field {number} ({size} bytes) runs past the end of the message")
            value = buf[pos : pos + size]
            pos += size
        else:
            raise _WireError(f"unsupported wire type {wire} (field {number})")
        yield number, wire, value


def _to_int64(value: int) -> int:
    """Reinterpret a decoded varint as a two's-complement int64 (negatives use 10 bytes)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_int64_list(buf: memoryview) -> np.ndarray:
    """Int64List{value(1): repeated int64}; packed (one wire-2 field) or unpacked (wire 0)."""
    values: list[int] = []
    for number, wire, value in _iter_fields(buf):
        if number != 1:
            continue  # unknown field: ignore, as protobuf does
        if wire == 0:
            values.append(_to_int64(value))
        elif wire == 2:
            pos = 0
            while pos < len(value):
                item, pos = _read_varint(value, pos)
                values.append(_to_int64(item))
        else:
            raise _WireError(f"Int64List value has wire type {wire}")
    return np.array(values, dtype=np.int64)


def _decode_float_list(buf: memoryview) -> np.ndarray:
    """FloatList{value(1): repeated float}; packed (wire 2, float32 LE) or unpacked (wire 5)."""
    parts: list[np.ndarray] = []
    for number, wire, value in _iter_fields(buf):
        if number != 1:
            continue
        if wire == 5:
            parts.append(np.array([value], dtype="<u4").view("<f4"))
        elif wire == 2:
            if len(value) % 4:
                raise _WireError("packed FloatList length is not a multiple of 4")
            parts.append(np.frombuffer(value, dtype="<f4"))
        else:
            raise _WireError(f"FloatList value has wire type {wire}")
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


def _decode_bytes_list(buf: memoryview) -> list[bytes]:
    """BytesList{value(1): repeated bytes}."""
    values = []
    for number, wire, value in _iter_fields(buf):
        if number == 1:
            if wire != 2:
                raise _WireError(f"BytesList value has wire type {wire}")
            values.append(bytes(value))
    return values


def _decode_feature(buf: memoryview) -> list[bytes] | np.ndarray:
    """Feature = oneof {bytes_list(1), float_list(2), int64_list(3)}; the last one present wins
    (protobuf oneof semantics). An empty Feature decodes to an empty list."""
    result: list[bytes] | np.ndarray = []
    for number, wire, value in _iter_fields(buf):
        if number not in (1, 2, 3):
            continue
        if wire != 2:
            raise _WireError(f"Feature field {number} has wire type {wire}")
        decoder = {1: _decode_bytes_list, 2: _decode_float_list, 3: _decode_int64_list}[number]
        result = decoder(value)
    return result


def _decode_map_entry(buf: memoryview) -> tuple[str, list[bytes] | np.ndarray]:
    """map<string, Feature> entry: key(1) string, value(2) Feature; both may be absent."""
    key, feature = "", memoryview(b"")
    for number, wire, value in _iter_fields(buf):
        if wire != 2:
            continue
        if number == 1:
            key = bytes(value).decode("utf-8")
        elif number == 2:
            feature = value
    return key, _decode_feature(feature)


def _decode_example(buf: memoryview) -> dict[str, list[bytes] | np.ndarray]:
    """Example{features(1): Features{feature(1): map<string, Feature>}}."""
    features: dict[str, list[bytes] | np.ndarray] = {}
    for number, wire, value in _iter_fields(buf):
        if number != 1 or wire != 2:
            continue
        for inner_number, inner_wire, entry in _iter_fields(value):
            if inner_number == 1 and inner_wire == 2:
                key, feature = _decode_map_entry(entry)
                features[key] = feature  # a repeated key overrides, as in protobuf maps
    return features


def parse_example(data: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """Decode a serialized ``tf.train.Example``.

    Returns:
        feature name -> value: a ``list[bytes]`` for a BytesList, a 1-D ``float32`` array for a
        FloatList, a 1-D ``int64`` array for an Int64List (packed and unpacked encodings both
        accepted), an empty list for a Feature with no kind set.

    Raises:
        UdasegError: the bytes are not a well-formed Example.
    """
    try:
        return _decode_example(memoryview(data))
    except (_WireError, UnicodeDecodeError) as exc:
        raise UdasegError(
            f"malformed tf.train.Example: {exc}",
            hint="the record is not a serialized tf.train.Example; check the file is a TFRecord "
            "of Examples",
        ) from exc


# --- SIFA records --------------------------------------------------------------------------------

_SIFA_KEYS = ("data_vol", "label_vol", *(f"{p}size_dim{i}" for p in "dl" for i in range(3)))


def _sifa_array(features: dict, name: str, size_prefix: str, path: Path, index: int) -> np.ndarray:
    """Decode one raw-float32 feature and reshape it (C order) to its stored size."""
    shape = tuple(int(features[f"{size_prefix}size_dim{i}"][0]) for i in range(3))
    raw = features[name]
    if not isinstance(raw, list) or len(raw) != 1:
        raise UdasegError(
            f"{path}: record {index} feature {name} is not a single bytes value",
            hint="this is not one of SIFA's MMWHS TFRecords",
            path=path,
        )
    if len(raw[0]) != 4 * int(np.prod(shape)):
        raise UdasegError(
            f"{path}: record {index} feature {name} has {len(raw[0])} bytes, expected "
            f"{4 * int(np.prod(shape))} for float32 {shape}",
            hint="the record is damaged or not one of SIFA's MMWHS TFRecords",
            path=path,
        )
    # copy: frombuffer views are read-only and would keep the whole record alive
    return np.frombuffer(raw[0], dtype="<f4").reshape(shape).astype(np.float32)


def _sifa_pair(features: dict, path: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    missing = [key for key in _SIFA_KEYS if key not in features]
    bad_size = [key for key in _SIFA_KEYS[2:] if key not in missing and len(features[key]) != 1]
    if missing or bad_size:
        raise UdasegError(
            f"{path}: record {index} is not a SIFA MMWHS record (missing or malformed "
            f"features: {', '.join(missing + bad_size)}; present: {', '.join(sorted(features))})",
            hint="point at SIFA's released MMWHS .tfrecords (features data_vol, label_vol, "
            "dsize_dim0..2, lsize_dim0..2)",
            path=path,
        )
    image = _sifa_array(features, "data_vol", "d", path, index)
    label = _sifa_array(features, "label_vol", "l", path, index)
    return image, label


def read_sifa_record(
    path: str | Path, verify_crc: bool = True
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read every (image, label) pair from one of SIFA's MMWHS TFRecord files.

    Returns:
        one ``(image, label)`` per record, in file order. ``image`` is float32 (H, W, 3) =
        (256, 256, 3) for the released data, SIFA-normalised intensities; ``label`` is float32
        (H, W, 3) holding integer class codes 0..5 (SIFA evaluates 1..4). Both are in C order
        (row, column, channel) exactly as stored; channel 1 is the slice, channels 0 and 2 its
        neighbours. Use ``label[..., 1]`` as the target of the slice, as SIFA does.

    Raises:
        UdasegError: missing file, truncated record, CRC mismatch, malformed Example or a record
            without SIFA's features (naming the file and the record index).
    """
    path = Path(path)
    pairs = []
    for index, data in enumerate(iter_tfrecord(path, verify_crc=verify_crc)):
        try:
            features = parse_example(data)
        except UdasegError as exc:
            raise UdasegError(
                f"{path}: record {index}: {exc.message}", hint=exc.hint, path=path
            ) from exc
        pairs.append(_sifa_pair(features, path, index))
    return pairs
