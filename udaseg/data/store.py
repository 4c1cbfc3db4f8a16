"""The HDF5 store every later stage reads: one file per dataset and domain.

Layout (plain h5py reads it; no udaseg needed)::

    /                               attrs: format="udaseg-store", format_version=1, dataset, domain,
                                           modality, view, classes (JSON list), labelled (bool)
    /cases/<case_id>/image          (S, H, W) float32, normalised intensities; chunks (1, H, W)
    /cases/<case_id>/label          (S, H, W) uint8 class ids 0..C (absent if unlabelled);
                                    255 (``IGNORE_LABEL``) marks "not labelled" voxels, which
                                    only pseudo-labelled stores hold
    /cases/<case_id>/foreground     (S,) int32 voxels of classes 1..C per slice (-1 if unlabelled)
    /cases/<case_id>                attrs: meta (JSON): original and processed geometry
                                           (size/spacing/origin/direction, x-y-z order), crop box,
                                           source files with SHA-256, intensity statistics
    /index/case                     (N,) int32 position of the slice's case in /index/case_ids
    /index/slice                    (N,) int32 slice number k within the case (array axis 0)
    /index/position                 (N,) float32 k / (S - 1): 0 first slice, 1 last
    /index/foreground               (N,) int32 labelled voxels in the slice (-1 if unlabelled)
    /index/case_ids                 (n_cases,) UTF-8 strings, sorted

(S, H, W) is (slice, row, column) along the dataset's view (see ``udaseg.data.geometry``), so a
random 2D training slice is one contiguous, separately compressed chunk: ``image[k]``.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from udaseg.errors import UdasegError

STORE_FORMAT = "udaseg-store"
STORE_VERSION = 1
# gzip (deflate) rather than lzf: every HDF5 reader (h5py, MATLAB, HDFView, nibabel users) has it;
# level 1 costs little time over no compression while shrinking background-heavy volumes a lot
_COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
_STR = h5py.string_dtype("utf-8")
# label value of voxels without a label (a pseudo-label too uncertain to train on); the training
# samplers turn it into the losses' ignore index
IGNORE_LABEL = 255

try:  # ISA-L deflate is ~3x faster than zlib's at level 1 and writes the same zlib format
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover
    _deflate = zlib
# compression releases the GIL, so slices are compressed on a few threads at once
_POOL = ThreadPoolExecutor(max_workers=4)


def _compress_slice(array: np.ndarray) -> bytes:
    """One (1, H, W) chunk as HDF5's shuffle + deflate filters would store it."""
    raw = np.ascontiguousarray(array)
    if raw.itemsize > 1:  # shuffle: byte planes one after another
        raw = raw.view(np.uint8).reshape(-1, raw.itemsize).T
    return _deflate.compress(np.ascontiguousarray(raw).tobytes(), 1)


def write_volume(group: h5py.Group, name: str, volume: np.ndarray) -> h5py.Dataset:
    """Write an (S, H, W) volume chunked by slice with shuffle + gzip, compressing in threads.

    The file is an ordinary gzip-filtered HDF5 dataset (any HDF5 reader decodes it); only the
    compression is done here instead of inside HDF5, where it runs on one core.
    """
    dataset = group.create_dataset(
        name, shape=volume.shape, dtype=volume.dtype, chunks=(1, *volume.shape[1:]), **_COMPRESSION
    )
    for k, chunk in enumerate(_POOL.map(_compress_slice, volume)):
        dataset.id.write_direct_chunk((k, 0, 0), chunk)
    return dataset


class StoreWriter:
    """Write cases into a new store; the slice index is built on :meth:`close`.

    Use as a context manager. The file is written where told; atomicity comes from the stage
    building its whole output directory under ``.partial`` (see ``udaseg.artifacts``).
    """

    def __init__(
        self,
        path: Path,
        *,
        dataset: str,
        domain: str,
        modality: str,
        view: str,
        classes: Iterable[str],
        labelled: bool,
    ) -> None:
        self.path = Path(path)
        self.file = h5py.File(self.path, "w")
        self.file.attrs.update(
            format=STORE_FORMAT,
            format_version=STORE_VERSION,
            dataset=dataset,
            domain=domain,
            modality=modality,
            view=view,
            classes=json.dumps(list(classes)),
            labelled=labelled,
        )
        self.file.create_group("cases")

    def add_case(
        self, case_id: str, image: np.ndarray, label: np.ndarray | None, meta: dict[str, Any]
    ) -> None:
        """Add one case: ``image`` (S, H, W) float32, ``label`` (S, H, W) uint8 or None."""
        if "/" in case_id or case_id in self.file["cases"]:
            raise UdasegError(f"case id {case_id!r} is not unique or contains '/'")
        group = self.file["cases"].create_group(case_id)
        write_volume(group, "image", image.astype(np.float32, copy=False))
        if label is not None:
            write_volume(group, "label", label.astype(np.uint8, copy=False))
            foreground = foreground_voxels(label)
        else:
            foreground = np.full(image.shape[0], -1, dtype=np.int32)
        group.create_dataset("foreground", data=foreground)
        group.attrs["meta"] = json.dumps(meta, default=_to_json)

    def close(self) -> None:
        if self.file:
            build_index(self.file)
            self.file.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.file.close()


def foreground_voxels(label: np.ndarray) -> np.ndarray:
    """(S,) int32 voxels of classes 1..C in each slice of an (S, H, W) label (ignored ones not)."""
    return ((label > 0) & (label != IGNORE_LABEL)).sum(axis=(1, 2)).astype(np.int32)


def _to_json(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def build_index(file: h5py.File) -> None:
    """(Re)build ``/index`` from the cases present, in sorted case-id order."""
    if "index" in file:
        del file["index"]
    case_ids = sorted(file["cases"])
    cases, slices, positions, foreground = [], [], [], []
    for i, case_id in enumerate(case_ids):
        fg = file["cases"][case_id]["foreground"][()]
        n = len(fg)
        cases.append(np.full(n, i, dtype=np.int32))
        slices.append(np.arange(n, dtype=np.int32))
        positions.append((np.arange(n) / max(n - 1, 1)).astype(np.float32))
        foreground.append(fg.astype(np.int32))
    index = file.create_group("index")

    def join(parts, dt):
        return np.concatenate(parts) if parts else np.zeros(0, dt)

    index.create_dataset("case", data=join(cases, np.int32))
    index.create_dataset("slice", data=join(slices, np.int32))
    index.create_dataset("position", data=join(positions, np.float32))
    index.create_dataset("foreground", data=join(foreground, np.int32))
    index.create_dataset("case_ids", data=np.array(case_ids, dtype=object), dtype=_STR)


class Store:
    """Read-only access to a store. Cheap to create; opens the file lazily.

    h5py handles must not cross ``fork``: each data-loader worker creates its own ``Store``
    (or calls :meth:`reopen`) rather than inheriting an open one.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UdasegError(
                f"store {self.path} does not exist",
                hint="run `udaseg preprocess` first and pass its output directory",
                path=self.path,
            )
        self._file: h5py.File | None = None
        attrs = self.file.attrs
        if attrs.get("format") != STORE_FORMAT or attrs.get("format_version") != STORE_VERSION:
            raise UdasegError(
                f"{self.path} is not a udaseg store of version {STORE_VERSION}",
                hint="rebuild it with `udaseg preprocess`",
                path=self.path,
            )
        self.dataset = str(attrs["dataset"])
        self.domain = str(attrs["domain"])
        self.modality = str(attrs["modality"])
        self.view = str(attrs["view"])
        self.classes: list[str] = json.loads(attrs["classes"])
        self.labelled = bool(attrs["labelled"])
        with self.reading("the case list"):
            ids = self.file["index/case_ids"][()]
        self.case_ids: list[str] = [c.decode() if isinstance(c, bytes) else str(c) for c in ids]

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise UdasegError(
                    f"cannot open store {self.path}: {exc}",
                    hint="rerun `udaseg preprocess`",
                    path=self.path,
                ) from exc
        return self._file

    def reopen(self) -> None:
        self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _case(self, case_id: str) -> h5py.Group:
        if case_id not in self.file["cases"]:
            raise UdasegError(f"case {case_id!r} is not in store {self.path}", path=self.path)
        return self.file["cases"][case_id]

    @contextlib.contextmanager
    def reading(self, what: str) -> Iterator[None]:
        """Turn HDF5's read errors (a damaged chunk fails its checksum or decompression) into
        one that names the store and ``what`` was read (a case id, the index).

        Raises:
            UdasegError: naming the store file and ``what``, suggesting a rebuild.
        """
        try:
            yield
        except (OSError, RuntimeError, KeyError) as exc:
            raise UdasegError(
                f"store {self.path} is damaged: {what} cannot be read ({exc})",
                hint="rebuild it: rerun the stage that wrote it with --force (`udaseg preprocess "
                "... --force` for a preprocessed store)",
                path=self.path,
            ) from exc

    def meta(self, case_id: str) -> dict[str, Any]:
        """The case's geometry and provenance record (see the module docstring)."""
        with self.reading(f"case {case_id}"):
            return json.loads(self._case(case_id).attrs["meta"])

    def image(self, case_id: str) -> np.ndarray:
        """(S, H, W) float32 normalised volume."""
        with self.reading(f"case {case_id}"):
            return self._case(case_id)["image"][()]

    def label(self, case_id: str) -> np.ndarray | None:
        """(S, H, W) uint8 class ids, or None for an unlabelled case."""
        with self.reading(f"case {case_id}"):
            group = self._case(case_id)
            return group["label"][()] if "label" in group else None

    def slice(self, case_id: str, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Slice ``k``: image (H, W) float32 and label (H, W) uint8 or None."""
        with self.reading(f"case {case_id} slice {k}"):
            group = self._case(case_id)
            return group["image"][k], (group["label"][k] if "label" in group else None)

    def index(self) -> dict[str, np.ndarray]:
        """The slice index: arrays ``case``, ``slice``, ``position``, ``foreground`` of length N."""
        with self.reading("the slice index"):
            group = self.file["index"]
            return {key: group[key][()] for key in ("case", "slice", "position", "foreground")}

    def __len__(self) -> int:
        return len(self.case_ids)


def merge_stores(parts: list[Path], out: Path) -> None:
    """Merge shard stores of one dataset/domain into ``out`` (cases copied, index rebuilt)."""
    with h5py.File(out, "w") as target:
        for n, part in enumerate(parts):
            with h5py.File(part, "r") as source:
                if n == 0:
                    target.attrs.update(dict(source.attrs))
                    target.create_group("cases")
                for case_id in source["cases"]:
                    if case_id in target["cases"]:
                        raise UdasegError(f"case {case_id!r} appears in two shards ({part})")
                    source.copy(source["cases"][case_id], target["cases"], name=case_id)
        build_index(target)
