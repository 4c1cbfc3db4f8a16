"""Shared fixtures: tiny synthetic two-domain datasets written as NIfTI in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from udaseg.progress import NullProgress

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_MANIFEST = """
name: tiny
view: axial
classes: [organ_a, organ_b]
domains:
  src:
    modality: CT
    reader: nifti
    images: src/{case}_image.nii.gz
    labels: src/{case}_label.nii.gz
    label_map: {5: organ_a, 7: organ_b, 9: background}
    intensity: {method: minmax, percentiles: [0.5, 99.5], over: body}
    test_ids: [c3]
  tgt:
    modality: MR
    reader: nifti
    images: tgt/{case}_image.nii.gz
    labels: null
    intensity: {method: zscore, over: body}
geometry:
  inplane_mm: 2.0
  through_plane_mm: null
  crop: {method: body, margin_mm: 4}
  inplane_size: [24, 24]
splits:
  val_fraction: 0.25
  seed: 0
"""


def tiny_volume(seed: int, shape=(10, 28, 32), flip_y: bool = False):
    """A body (ellipse) holding two 'organs' with label codes 5 and 7 (and distractor 9).

    Returns image (S, H, W) float32 and label (S, H, W) int16 arrays.
    """
    rng = np.random.default_rng(seed)
    s, h, w = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    body = ((h - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + (
        (w - shape[2] / 2) / (shape[2] * 0.4)
    ) ** 2 < 1
    label = np.zeros(shape, np.int16)
    label[(abs(h - 10) < 3) & (abs(w - 11 - seed % 3) < 4) & (s > 1) & (s < 8)] = 5
    label[(abs(h - 18) < 2) & (abs(w - 21) < 3) & (s > 2) & (s < 7)] = 7
    label[(abs(h - 20) < 1) & (abs(w - 10) < 1) & (s == 4)] = 9
    image = np.where(body, 100.0, 0.0) + 80.0 * (label == 5) + 160.0 * (label == 7)
    image = (image + rng.normal(0, 5, shape)).astype(np.float32)
    if flip_y:
        image, label = image[:, ::-1].copy(), label[:, ::-1].copy()
    return image, label


def write_nifti(
    array: np.ndarray,
    path: Path,
    spacing=(1.5, 1.5, 3.0),
    origin=(0.0, 0.0, 0.0),
    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection([float(d) for d in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def write_tiny_dataset(raw: Path) -> Path:
    """Write a 4+3 case two-domain dataset in the layout of TINY_MANIFEST under ``raw``; returns
    the manifest, written beside ``raw``.

    Target (tgt) volumes are stored with a flipped y axis and direction diag(1, -1, 1), like the
    real CHAOS MR files, so they must come out of preprocessing facing the same way as src.
    """
    for i in range(4):
        image, label = tiny_volume(i)
        write_nifti(image, raw / "src" / f"c{i}_image.nii.gz")
        write_nifti(label, raw / "src" / f"c{i}_label.nii.gz")
    for i in range(3):
        image, _ = tiny_volume(10 + i, flip_y=True)
        write_nifti(
            image * 0.5 + 20,
            raw / "tgt" / f"m{i}_image.nii.gz",
            spacing=(2.0, 2.0, 4.0),
            origin=(0.0, 54.0, 0.0),
            direction=(1, 0, 0, 0, -1, 0, 0, 0, 1),
        )
    manifest = raw.parent / "tiny.yaml"
    manifest.write_text(TINY_MANIFEST)
    return manifest


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """(raw folder, manifest path) of :func:`write_tiny_dataset`'s dataset in ``tmp_path``."""
    raw = tmp_path / "raw"
    return raw, write_tiny_dataset(raw)


def require_shared(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (only in the development workspace)")
    return path


class KillAt(NullProgress):
    """Raises (like a kill) when the loop reports reaching a given step."""

    def __init__(self, step: int) -> None:
        self.stop, self.seen = step, 0

    def advance(self, task, steps=1, **fields) -> None:
        self.seen += steps
        if self.seen >= self.stop:
            raise KeyboardInterrupt("killed")


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny convolutions run fastest on one thread, and a second thread fighting other
    processes for the CPU slows them several-fold; restore the setting for other tests.
    Stages started in the test keep it as their default. Modules of tiny-network tests take it
    with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    from udaseg import device

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(device, "_PROCESS_THREADS", 1)
    yield
    torch.set_num_threads(threads)
