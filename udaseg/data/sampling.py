"""Random training batches from HDF5 stores: 2D slices or 3D sub-volumes.

Sampling runs in the training process from a ``numpy.random.Generator`` that the checkpoint saves,
so a resumed run draws exactly the batches the uninterrupted run would have drawn. Cases are read
once and kept in memory when they fit a budget (the usual case for 2D work on a CPU), otherwise
slices are read from the store on demand (each slice is one compressed HDF5 chunk).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udaseg import layout
from udaseg.data.store import IGNORE_LABEL, Store
from udaseg.errors import UdasegError

# what the losses skip (their ignore_index): stores' IGNORE_LABEL voxels become this in a batch
IGNORE_INDEX = -100


def store_path(path: Path) -> Path:
    """``store.h5`` of an artifact directory, or the path itself when it is a file."""
    path = Path(path)
    return path / layout.STORE if path.is_dir() else path


def split_cases(artifact: Path, split: str, store: Store) -> list[str]:
    """Case ids of ``split`` (train/val/test/all, or several: ``val,test``) from the artifact's
    ``splits.json``, in the store's order."""
    if split == "all":
        return list(store.case_ids)
    if "," in split:
        chosen = {
            c for name in split.split(",") for c in split_cases(artifact, name.strip(), store)
        }
        return [c for c in store.case_ids if c in chosen]
    folder = Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent
    path = folder / layout.SPLITS
    if not path.is_file():
        raise UdasegError(
            f"{path} is missing, so split '{split}' is unknown",
            hint="pass a preprocessed artifact directory, or use split 'all'",
            path=path,
        )
    splits = json.loads(path.read_text(encoding="utf-8"))
    if split not in splits:
        raise UdasegError(f"split '{split}' not in {path} (has {', '.join(splits)})", path=path)
    return [c for c in splits[split] if c in store.case_ids]


def middle_slices(n_slices: int) -> range:
    """Slice numbers of the middle two thirds of a volume of ``n_slices`` (a sixth of the slices,
    rounded, dropped at each end, where a scan is mostly air and scanner table; never empty)."""
    cut = int(round(n_slices / 6))
    return range(cut, n_slices - cut) if n_slices - 2 * cut > 0 else range(n_slices)


@dataclass(frozen=True)
class Source:
    """A store and the cases of it to use."""

    store: Store
    cases: tuple[str, ...]


class VolumeBank:
    """Image and label volumes of some cases, in memory when they fit ``memory_budget`` bytes."""

    def __init__(
        self, sources: list[Source], *, need_labels: bool, memory_budget: float = 4e9
    ) -> None:
        self.entries: list[tuple[Store, str]] = [(s.store, c) for s in sources for c in s.cases]
        if not self.entries:
            raise UdasegError(
                "no cases to sample from",
                hint="check the split (splits.json) and --cases of the stores",
            )
        if need_labels:
            for store, _ in self.entries:
                if not store.labelled:
                    raise UdasegError(
                        f"store {store.path} ({store.dataset}/{store.domain}) has no labels, "
                        "but training on it needs them",
                        hint="train on a labelled domain (source, or target only for the "
                        "supervised bound)",
                        path=store.path,
                    )
        self.need_labels = need_labels
        shapes = [store.file["cases"][case]["image"].shape for store, case in self.entries]
        # float32 image + uint8 label per voxel
        self.in_memory = sum(int(np.prod(shape)) * 5 for shape in shapes) <= memory_budget
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.foreground = [
            store.file["cases"][case]["foreground"][()] for store, case in self.entries
        ]

    def volume(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Case ``i`` as (image (S, H, W) float32, label (S, H, W) uint8 or None)."""
        if i in self._cache:
            return self._cache[i]
        store, case = self.entries[i]
        data = (store.image(case), store.label(case) if self.need_labels else None)
        if self.in_memory:
            self._cache[i] = data
        return data

    def slices(self, i: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Slices ``start:stop`` of case ``i`` (read from disk when not cached)."""
        if self.in_memory or i in self._cache:
            image, label = self.volume(i)
            return image[start:stop], None if label is None else label[start:stop]
        store, case = self.entries[i]
        group = store.file["cases"][case]
        label = group["label"][start:stop] if self.need_labels else None
        return group["image"][start:stop], label


def fit(
    array: np.ndarray, size: tuple[int, ...], start: tuple[int, ...], fill: float
) -> np.ndarray:
    """Cut a window of ``size`` at ``start`` from the last len(size) axes, padding with ``fill``
    where the window leaves the array (``start`` may be negative)."""
    lead = array.ndim - len(size)
    out = np.full(array.shape[:lead] + tuple(size), fill, dtype=array.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for axis, (want, first) in enumerate(zip(size, start, strict=True)):
        have = array.shape[lead + axis]
        lo, hi = max(first, 0), min(first + want, have)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - first, max(lo, hi) - first))
    out[tuple(dst)] = array[tuple(src)]
    return out


def _window_start(extent: int, size: int, rng: np.random.Generator, centre: int | None) -> int:
    """Start of a window of ``size`` along an axis of ``extent``: random, around ``centre`` if
    given; centred (padding both sides) when the axis is shorter than the window."""
    if extent <= size:
        return -((size - extent) // 2)
    if centre is None:
        return int(rng.integers(0, extent - size + 1))
    jitter = int(rng.integers(-size // 4, size // 4 + 1))
    return int(np.clip(centre - size // 2 + jitter, 0, extent - size))


class SliceSampler:
    """Random 2D training batches: (images (B, 2K+1, H, W) float32, labels (B, H, W) int64).

    Slices are drawn uniformly over all slices of all cases, except that a fraction
    ``foreground_fraction`` of each batch comes from slices holding labelled structures (small
    organs are otherwise rare in a batch). Slices larger than ``patch_size`` are cropped at a random
    position, smaller ones padded with the slice minimum (the normalised background).

    ``context_slices`` K > 0 gives 2.5D input: the drawn slice k and its neighbours k-K..k+K in
    slice order as channels (channel K is slice k), slice numbers clipped to the volume so its
    first/last slice repeats at the ends, as :func:`udaseg.inference.predict_volume` stacks them;
    all channels share one crop, padded with the stack's minimum. The label is slice k's. K = 0
    (one channel) draws and returns exactly what it always did.
    """

    def __init__(
        self,
        bank: VolumeBank,
        patch_size: tuple[int, int],
        batch_size: int,
        rng: np.random.Generator,
        foreground_fraction: float = 0.5,
        skip_empty: bool = False,
        context_slices: int = 0,
    ) -> None:
        if context_slices < 0:
            raise ValueError(f"context_slices must be >= 0, got {context_slices}")
        self.bank, self.patch_size, self.batch_size, self.rng = bank, patch_size, batch_size, rng
        self.context_slices = context_slices
        self.index = [(i, k) for i, fg in enumerate(bank.foreground) for k in range(len(fg))]
        if skip_empty:
            self.index = [(i, k) for i, k in self.index if not _is_empty(bank, i, k)]
        self.labelled = [
            (i, k) for i, fg in enumerate(bank.foreground) for k in np.flatnonzero(fg > 0).tolist()
        ]
        self.foreground_fraction = foreground_fraction if self.labelled else 0.0

    def __call__(self) -> tuple[np.ndarray, np.ndarray | None]:
        n_fg = int(round(self.foreground_fraction * self.batch_size))
        picks = (
            [self.labelled[j] for j in self.rng.integers(0, len(self.labelled), n_fg)]
            if n_fg
            else []
        )
        picks += [
            self.index[j] for j in self.rng.integers(0, len(self.index), self.batch_size - n_fg)
        ]
        images, labels = [], []
        for i, k in picks:
            image, label = self._stack(i, k)
            start = tuple(
                _window_start(e, s, self.rng, None)
                for e, s in zip(image.shape[1:], self.patch_size, strict=True)
            )
            images.append(fit(image, self.patch_size, start, float(image.min())))
            if label is not None:
                labels.append(fit(label, self.patch_size, start, 0)[0])
        return np.stack(images).astype(np.float32), _batch_labels(labels)

    def _stack(self, i: int, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Slice ``k`` of case ``i`` with its context: image (2K+1, H, W), label (1, H, W) or
        None. Reads only the slices the stack holds (one HDF5 chunk each when not in memory)."""
        if self.context_slices == 0:
            return self.bank.slices(i, k, k + 1)
        n_slices = len(self.bank.foreground[i])
        lo, hi = max(k - self.context_slices, 0), min(k + self.context_slices + 1, n_slices)
        image, label = self.bank.slices(i, lo, hi)
        offsets = np.arange(k - self.context_slices, k + self.context_slices + 1)
        image = image[np.clip(offsets, 0, n_slices - 1) - lo]
        return image, None if label is None else label[k - lo : k - lo + 1]


def _batch_labels(labels: list[np.ndarray]) -> np.ndarray | None:
    """Stacked int64 labels with the stores' IGNORE_LABEL turned into the losses' IGNORE_INDEX."""
    if not labels:
        return None
    batch = np.stack(labels).astype(np.int64)
    batch[batch == IGNORE_LABEL] = IGNORE_INDEX
    return batch


def _is_empty(bank: VolumeBank, i: int, k: int, tolerance: float = 1e-3) -> bool:
    """True for a slice with (almost) no contrast, e.g. all background outside the body.

    Such slices teach a translator nothing, and they are harmful to instance-normalised networks:
    with a constant input every InstanceNorm sees zero variance and multiplies the gradient by
    1/sqrt(eps) ~ 316, which overflows to inf through a deep generator (seen on real CHAOS MR).
    """
    image, _ = bank.slices(i, k, k + 1)
    return float(image.max() - image.min()) <= tolerance


class PatchSampler:
    """Random 3D training batches: (images (B, 1, D, H, W), labels (B, D, H, W) int64).

    Each sub-volume of ``patch_size`` (slices, rows, cols) comes from a random case; with
    probability ``foreground_fraction`` it is centred (with jitter) on a labelled voxel.
    """

    def __init__(
        self,
        bank: VolumeBank,
        patch_size: tuple[int, int, int],
        batch_size: int,
        rng: np.random.Generator,
        foreground_fraction: float = 0.5,
    ) -> None:
        self.bank, self.patch_size, self.batch_size, self.rng = bank, patch_size, batch_size, rng
        self.foreground_fraction = foreground_fraction

    def __call__(self) -> tuple[np.ndarray, np.ndarray | None]:
        images, labels = [], []
        for _ in range(self.batch_size):
            i = int(self.rng.integers(0, len(self.bank.entries)))
            image, label = self.bank.volume(i)
            centre = None
            if label is not None and self.rng.random() < self.foreground_fraction:
                centre = self._foreground_voxel(i, label)
            start = tuple(
                _window_start(e, s, self.rng, None if centre is None else c)
                for e, s, c in zip(image.shape, self.patch_size, centre or (0, 0, 0), strict=True)
            )
            images.append(fit(image, self.patch_size, start, float(image.min()))[None])
            if label is not None:
                labels.append(fit(label, self.patch_size, start, 0))
        return np.stack(images).astype(np.float32), _batch_labels(labels)

    def _foreground_voxel(self, i: int, label: np.ndarray) -> tuple[int, int, int] | None:
        # a random labelled slice (from the store's per-slice counts), then a random labelled
        # voxel in it: cheap on large volumes
        slices = np.flatnonzero(self.bank.foreground[i] > 0)
        if len(slices) == 0:
            return None
        k = int(slices[self.rng.integers(0, len(slices))])
        rows, cols = np.nonzero((label[k] > 0) & (label[k] != IGNORE_LABEL))
        j = int(self.rng.integers(0, len(rows)))
        return (k, int(rows[j]), int(cols[j]))


class BalancedSampler:
    """Batches made of a fixed share from each of several samplers (one per store), in order.

    Pooling the slices of a labelled source and a pseudo-labelled target lets whichever has more
    slices fill the batch (a CT target of thin slices outnumbers an MR source about eight to one);
    adaptation methods draw equal source and target batches instead, and so does this.
    """

    def __init__(self, samplers: list[SliceSampler | PatchSampler]) -> None:
        self.samplers = samplers

    def __call__(self) -> tuple[np.ndarray, np.ndarray | None]:
        parts = [sampler() for sampler in self.samplers]
        images = np.concatenate([images for images, _ in parts])
        labels = [labels for _, labels in parts]
        return images, None if any(x is None for x in labels) else np.concatenate(labels)
