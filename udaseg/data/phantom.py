"""Synthetic cross-modality phantoms written in the exact file layouts of real public datasets.

The demo and the tests run the very reader code that real data goes through, so the phantom does
not hand arrays to the pipeline: it writes small NIfTI datasets laid out like the real downloads.

Tasks and layouts (``N`` / ``ID`` are integer case ids):

``abdomen`` -- the SSL-ALPNet "normalized" abdominal layout::

    sabs_CT_normalized/image_N.nii.gz, label_N.nii.gz        CT, N = 0, 1, 2, ...
    chaos_MR_T2_normalized/image_N.nii.gz, label_N.nii.gz    MR T2, N = CHAOS ids 1, 2, 3, 5, 8, ...

    CT image uint8 0..255 (already windowed), label float32 with BTCV codes 1 spleen, 2 right
    kidney, 3 left kidney, 6 liver, and distractors 4 gallbladder, 7 stomach, 8 aorta, 9 inferior
    vena cava (preprocessing must map those to background). MR image float64 about 0..1000, label
    float64 with CHAOS codes 1 liver, 2 right kidney, 3 left kidney, 4 spleen.

    Orientation, as in the real files: both arrays are stored LAS (row 0 posterior, the y axis
    running anterior-ward; column 0 patient right; slice 0 inferior). The MR header says so
    (direction diag(1, -1, 1), non-zero origin); the CT header claims identity (LPS) with origin
    (0, 0, 0), which is wrong -- taken at its word it puts the kidneys in front of the liver.
    ``data_manifests/abdominal-normalized.yaml`` corrects that with ``assume_orientation: LAS``; a
    reader that trusts the CT header sees the CT upside down relative to the MR.

``cardiac`` -- the MM-WHS layout::

    ct_train/ct_train_ID_image.nii.gz, ct_train_ID_label.nii.gz    ID = 1001, 1002, ...
    mr_train/mr_train_ID_image.nii.gz, mr_train_ID_label.nii.gz

    Labels 205 LV myocardium, 420 left atrium, 500 LV cavity, 820 ascending aorta (the classes),
    and 550 right atrium, 600 right ventricle, 850 pulmonary artery (map to background); CT label
    uint16, MR label int16. CT image int16 HU in -1000..1500, MR image int16 in 0..~2000.
    Direction identity for both, non-zero origins.

``mscmrseg`` -- the MS-CMRSeg 2019 release (cropped by the VarDA authors)::

    C0/patientN_C0.nii.gz, patientN_C0_manual.nii.gz      bSSFP cine, N = 1, 2, 3, ...
    LGE/patientN_LGE.nii.gz, patientN_LGE_manual.nii.gz   LGE, N = 1 (then 2, ...), 6, 7, ...

    Short-axis stacks (oblique headers, nearest body axes PSR or LSP, every third case stored
    transposed), images float32, labels int16 with 200 myocardium, 500 LV blood pool, 600 RV.
    bSSFP: bright blood, dark myocardium; LGE: grey blood, nulled myocardium with bright scar
    patches. The C0 headers state 1/0.6 times the true in-plane spacing, as the release's do.
    LGE ids start at 1 (VarDA's validation patients 1-5) and continue at 6, so both splits hold
    cases. See :mod:`udaseg.data.phantom_short_axis`.

Array layout: a numpy volume is (D, H, W) = (z, y, x), which SimpleITK reads as an image of size
(x, y, z); spacing and origin are in mm in SimpleITK (x, y, z) order. Anatomy is defined in a
patient "body frame" in mm (LPS: +x patient left, +y posterior, +z superior, origin at the body
centre) and sampled at each voxel's physical position under the true (LAS or LPS) direction, so
flipped axes flip the stored arrays exactly as in the real files.

The modality gap is deliberate and strong: organ contrast ordering is reversed (CT liver > spleen >
kidney; MR T2 kidney > spleen > liver), fat is dark in CT and bright in MR, MR has a smooth
multiplicative bias field and Rician noise, CT Gaussian noise, and the two differ in resolution and
field of view (CT: finer in-plane, thin slices, longer z coverage with organ-free slices; MR:
coarse, thick slices just covering the organs).

Sizes: ``small`` (default) 96x96 in-plane, CT 48 slices (1.6-1.8 mm in-plane, 2.5-3 mm thick), MR
16 slices (2.0-2.5 mm, 6.5-7.5 mm thick), C0 8 / LGE 12 slices, 6 cases per domain, about 2 s to
write; ``tiny`` 48x48, CT 14 / MR 10 (C0 6 / LGE 8) slices with proportionally coarser spacing
(same field of view), 3 cases.

Every case draws from its own ``numpy.random.default_rng([seed, task, domain, case])`` stream, so
the output is deterministic for a seed (byte-identical files) and adding cases never changes the
earlier ones. Each file is written under a hidden temporary name and ``os.replace``d into place;
``phantom.json`` marks the folder as a phantom's from the start (``complete: false`` until done),
so a rerun cleans up after an interrupted or larger earlier run, while a folder of real NIfTI data
without it is refused rather than overwritten.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from udaseg.data import phantom_short_axis
from udaseg.data.phantom_anatomy import Points, Scene, abdomen_scene, cardiac_scene
from udaseg.errors import UdasegError, look_up_option

__all__ = [
    "CARDIAC_LABELS",
    "CHAOS_MR_LABELS",
    "MSCMR_LABELS",
    "BTCV_CT_LABELS",
    "LABEL_CODES",
    "SIZES",
    "TASKS",
    "PhantomSize",
    "write_phantom",
]

# --- label codes ---------------------------------------------------------------------------------

# BTCV / Synapse codes as stored in sabs_CT_normalized; the first four are the evaluated organs.
BTCV_CT_LABELS = {
    "spleen": 1, "kidney_r": 2, "kidney_l": 3, "liver": 6,
    "gallbladder": 4, "stomach": 7, "aorta": 8, "ivc": 9,
}  # fmt: skip
# CHAOS MR T2 codes as stored in chaos_MR_T2_normalized (only the four organs are labelled).
CHAOS_MR_LABELS = {"liver": 1, "kidney_r": 2, "kidney_l": 3, "spleen": 4}
# MM-WHS codes, identical in CT and MR.
CARDIAC_LABELS = {"myo": 205, "la": 420, "lv": 500, "ra": 550, "rv": 600, "aorta": 820, "pa": 850}
# MS-CMRSeg codes, identical in C0 and LGE.
MSCMR_LABELS = {"myo": 200, "lv": 500, "rv": 600}

# task -> domain -> {code: structure name}; what PHANTOM.md and phantom.json list.
LABEL_CODES = {
    "abdomen": {
        "ct": {c: n for n, c in BTCV_CT_LABELS.items()},
        "mr": {c: n for n, c in CHAOS_MR_LABELS.items()},
    },
    "cardiac": {d: {c: n for n, c in CARDIAC_LABELS.items()} for d in ("ct", "mr")},
    "mscmrseg": {d: {c: n for n, c in MSCMR_LABELS.items()} for d in ("c0", "lge")},
}

# The structures a pipeline segments; every other code is a distractor that maps to background.
_CLASSES = {
    "abdomen": ("liver", "kidney_r", "kidney_l", "spleen"),
    "cardiac": ("myo", "la", "lv", "aorta"),
    "mscmrseg": ("myo", "lv", "rv"),
}

# Real CHAOS MR case ids (the phantom reuses them so ids are sparse, as in the real data).
_CHAOS_IDS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)


# --- sizes and domains ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomSize:
    """Matrix sizes of one phantom size. The physical field of view is the same at every size: a
    smaller matrix gets proportionally coarser spacing, so the anatomy always fits."""

    inplane: int  # H = W voxels
    ct_slices: int
    mr_slices: int
    n_cases: int  # per domain
    short_axis_slices: tuple[int, int]  # mscmrseg: C0 and LGE slices


SIZES = {
    "small": PhantomSize(inplane=96, ct_slices=48, mr_slices=16, n_cases=6,
                         short_axis_slices=(8, 12)),
    "tiny": PhantomSize(inplane=48, ct_slices=14, mr_slices=10, n_cases=3,
                        short_axis_slices=(6, 8)),
}  # fmt: skip
_REF = SIZES["small"]  # spacing ranges below are for this size


@dataclass(frozen=True)
class _Files:
    """Where one domain of a task is stored."""

    key: str  # "ct", "mr", "c0", "lge"
    folder: str
    image_name: str  # file name pattern with {id}
    label_name: str


@dataclass(frozen=True)
class _Domain(_Files):
    """How one modality of a body-frame task (abdomen, cardiac) is sampled and stored."""

    inplane_mm: tuple[float, float]  # spacing range at the "small" size
    slice_mm: tuple[float, float]
    z_jitter_mm: float  # how far the organs may sit off the centre of the z coverage
    flip_y: bool  # array rows run posterior -> anterior: direction diag(1, -1, 1), i.e. LAS
    # header written as identity direction and origin (0, 0, 0) whatever the array holds: the real
    # sabs_CT_normalized files do this (their arrays are LAS, their headers claim LPS)
    header_lps: bool
    image_dtype: type
    label_dtype: type
    value_range: tuple[float, float]  # clip range of stored intensities
    window: tuple[float, float] | None = None  # HU window mapped to 0..255 before storing


# CT: fine in-plane, thin slices, long z coverage (organ-free slices above/below); MR: coarse and
# thick, covering just the organs. Both z jitters keep the main organs off the first/last slice.
_CT_GRID = {"inplane_mm": (1.6, 1.8), "slice_mm": (2.5, 3.0), "z_jitter_mm": 8.0}
_MR_GRID = {"inplane_mm": (2.0, 2.5), "slice_mm": (6.5, 7.5), "z_jitter_mm": 2.0}

_ABDOMEN_DOMAINS = (
    _Domain("ct", "sabs_CT_normalized", "image_{id}.nii.gz", "label_{id}.nii.gz", **_CT_GRID,
            flip_y=True, header_lps=True, image_dtype=np.uint8, label_dtype=np.float32,
            value_range=(0, 255), window=(-125.0, 275.0)),
    _Domain("mr", "chaos_MR_T2_normalized", "image_{id}.nii.gz", "label_{id}.nii.gz", **_MR_GRID,
            flip_y=True, header_lps=False, image_dtype=np.float64, label_dtype=np.float64,
            value_range=(0.0, 1500.0)),
)  # fmt: skip
_CARDIAC_DOMAINS = (
    _Domain("ct", "ct_train", "ct_train_{id}_image.nii.gz", "ct_train_{id}_label.nii.gz",
            **_CT_GRID, flip_y=False, header_lps=False, image_dtype=np.int16,
            label_dtype=np.uint16, value_range=(-1000, 1500)),
    _Domain("mr", "mr_train", "mr_train_{id}_image.nii.gz", "mr_train_{id}_label.nii.gz",
            **_MR_GRID, flip_y=False, header_lps=False, image_dtype=np.int16,
            label_dtype=np.int16, value_range=(0, 2000)),
)  # fmt: skip

# Tissue appearance: name -> (CT value in HU, MR value in scanner units). Abdomen MR is T2-weighted:
# fluid and kidneys bright, liver dark, fat bright, vessels flow voids -- the reverse of CT's
# liver > spleen > kidney ordering. Cardiac MR is bSSFP-like: blood bright, fat brightest.
_ABDOMEN_TISSUES = {
    "air": (-1000, 0), "fat": (-100, 560), "visceral": (-40, 380), "muscle": (50, 160),
    "lung": (-850, 40), "bone": (500, 150), "bowel": (25, 320), "aorta": (190, 60),
    "ivc": (150, 90), "liver": (140, 200), "gallbladder": (10, 820), "stomach": (30, 720),
    "spleen": (110, 450), "kidney_r": (75, 750), "kidney_l": (75, 750),
}  # fmt: skip
_CARDIAC_TISSUES = {
    "air": (-1000, 0), "fat": (-100, 1250), "soft": (30, 420), "lung": (-850, 40),
    "bone": (700, 250), "desc_aorta": (380, 950), "rv": (300, 1250), "ra": (290, 1100),
    "pa": (300, 900), "myo": (110, 350), "lv": (380, 1300), "la": (370, 1150),
    "aorta": (380, 950),
}  # fmt: skip


@dataclass(frozen=True)
class _Task:
    layout: str
    domains: tuple[_Files, _Files]
    case_ids: Callable[[str, int], list[int]]
    # body-frame tasks: tissue values per domain, the scene, CT Gaussian sigma (HU) and MR Rician
    # sigma; tasks drawn in their own frame (mscmrseg) bring their own case writer instead
    tissues: dict[str, tuple[float, float]] | None = None
    scene: Callable[[np.random.Generator], Scene] | None = None
    noise: tuple[float, float] = (0.0, 0.0)
    write_case: Callable[..., list[str]] | None = None


def _abdomen_ids(domain: str, n: int) -> list[int]:
    """CT: 0..n-1 (as sabs_CT_normalized); MR: the sparse CHAOS ids, then 40, 41, ..."""
    if domain == "ct":
        return list(range(n))
    return [*_CHAOS_IDS[:n], *range(40, 40 + max(0, n - len(_CHAOS_IDS)))]


def _cardiac_ids(domain: str, n: int) -> list[int]:
    return list(range(1001, 1001 + n))


def _mscmr_ids(domain: str, n: int) -> list[int]:
    """C0: 1..n; LGE: a third of them (at least one) from 1 (VarDA's validation patients 1-5),
    the rest from 6 on, so the manifest's validation and training splits both hold cases."""
    if domain == "c0":
        return list(range(1, n + 1))
    val = min(5, max(1, n // 3))
    return [*range(1, val + 1), *range(6, 6 + n - val)]


_MSCMR_DOMAINS = (
    _Files("c0", "C0", "patient{id}_C0.nii.gz", "patient{id}_C0_manual.nii.gz"),
    _Files("lge", "LGE", "patient{id}_LGE.nii.gz", "patient{id}_LGE_manual.nii.gz"),
)


def _write_short_axis_case(
    task_name: str, dom: _Files, size: PhantomSize, stream: list[int], case_id: int, out_dir: Path
) -> list[str]:
    """Draw, render and write one short-axis case (see :mod:`udaseg.data.phantom_short_axis`)."""
    rng = np.random.default_rng(stream)
    slices = size.short_axis_slices[0 if dom.key == "c0" else 1]
    codes = {name: code for code, name in LABEL_CODES[task_name][dom.key].items()}
    variant = stream[-1] % 3  # PSR-like, LSP-like, transposed: every domain gets each in turn
    image, label, stack = phantom_short_axis.render_case(
        rng, dom.key, size.inplane, slices, variant, codes
    )
    direction = tuple(float(v) for v in stack.direction.ravel())
    grid = _Grid(stack.shape, stack.header_spacing, stack.origin, direction)
    paths = _case_files(dom, case_id)
    for array, rel in zip((image, label), paths, strict=True):
        _write_nifti(array, grid, out_dir / rel)
    return paths


_TASKS = {
    "abdomen": _Task("abdominal-normalized", _ABDOMEN_DOMAINS, _abdomen_ids, _ABDOMEN_TISSUES,
                     abdomen_scene, noise=(12.0, 18.0)),
    "cardiac": _Task("mmwhs", _CARDIAC_DOMAINS, _cardiac_ids, _CARDIAC_TISSUES, cardiac_scene,
                     noise=(25.0, 35.0)),
    "mscmrseg": _Task("mscmrseg", _MSCMR_DOMAINS, _mscmr_ids,
                      write_case=_write_short_axis_case),
}  # fmt: skip
# task -> layout name, which is also the name of the built-in manifest that reads that layout
# (data_manifests/<layout>.yaml), so a phantom's dataset.yaml can simply extend it
TASKS = {name: task.layout for name, task in _TASKS.items()}


# --- sampling grid -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Voxel grid of one volume: ``shape`` is numpy (D, H, W); ``spacing`` and ``origin`` are mm in
    SimpleITK (x, y, z) order; ``direction`` is the row-major 3x3 SimpleITK direction matrix."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def physical_axes(self) -> list[np.ndarray]:
        """Physical x (W,), y (H,), z (D,) coordinates in mm of the voxel centres (the direction
        is diagonal, so each axis depends on one index only)."""
        signs = np.diag(np.reshape(self.direction, (3, 3)))
        counts = self.shape[::-1]
        return [
            self.origin[i] + signs[i] * self.spacing[i] * np.arange(counts[i]) for i in range(3)
        ]


def _make_grid(
    rng: np.random.Generator, dom: _Domain, size: PhantomSize
) -> tuple[_Grid, np.ndarray]:
    """Draw spacing and placement; return the grid and the body centre in physical mm.

    Spacing ranges are for the small matrix and scale with it so the field of view stays the same.
    """
    slices = size.ct_slices if dom.key == "ct" else size.mr_slices
    ref_slices = _REF.ct_slices if dom.key == "ct" else _REF.mr_slices
    inplane = rng.uniform(*dom.inplane_mm) * _REF.inplane / size.inplane
    thick = rng.uniform(*dom.slice_mm) * ref_slices / slices
    spacing = (inplane, inplane, thick)
    counts = (size.inplane, size.inplane, slices)
    signs = (1.0, -1.0 if dom.flip_y else 1.0, 1.0)
    # centre of the field of view in scanner coordinates (an arbitrary table position)
    centre = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(-200, 50)])
    origin = tuple(
        float(centre[i] - signs[i] * 0.5 * (counts[i] - 1) * spacing[i]) for i in range(3)
    )
    jitter = np.array(
        [*np.clip(rng.normal(0.0, 2.0, 2), -4, 4), rng.uniform(-1, 1) * dom.z_jitter_mm]
    )
    direction = tuple(float(v) for v in np.diag(signs).ravel())
    grid = _Grid((slices, size.inplane, size.inplane), spacing, origin, direction)
    return grid, centre + jitter


def _body_points(grid: _Grid, body_centre: np.ndarray, roll_deg: float) -> Points:
    """Body-frame coordinates (mm) of every voxel, broadcastable to (D, H, W): physical position
    minus the body centre, rotated by the patient's slight roll about z."""
    x, y, z = (a - c for a, c in zip(grid.physical_axes(), body_centre, strict=True))
    c, s = np.cos(np.deg2rad(roll_deg)), np.sin(np.deg2rad(roll_deg))
    xb, yb = x[None, None, :], y[None, :, None]
    return (c * xb + s * yb, -s * xb + c * yb, z[:, None, None])


def _paint(scene: Scene, p: Points, names: list[str]) -> np.ndarray:
    """Tissue index map (D, H, W) uint8; indices into ``names`` (0 = air)."""
    body = scene.body.inside(p)
    inner = scene.inner.inside(p)
    shape = np.broadcast_shapes(*(a.shape for a in p))
    tissue = np.zeros(shape, np.uint8)
    tissue[np.broadcast_to(body, shape)] = names.index("fat")
    tissue[np.broadcast_to(inner, shape)] = names.index(scene.fill)
    inner = np.broadcast_to(inner, shape)
    for name, part in scene.parts:  # organs stay inside the abdominal / thoracic wall
        box = _box(p, *part.bounds())
        if box is None:
            continue
        zs, rows, cols = box  # evaluate only inside the part's box: painting stays fast
        sub = (p[0][:, rows, cols], p[1][:, rows, cols], p[2][zs])
        tissue[box][part.inside(sub) & inner[box]] = names.index(name)
    return tissue


def _box(p: Points, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Index slices (z, y, x) of the voxels whose body-frame position lies in [lo, hi] (mm)."""
    z = p[2][:, 0, 0]
    zs = np.flatnonzero((z >= lo[2]) & (z <= hi[2]))
    plane = ((p[0] >= lo[0]) & (p[0] <= hi[0]) & (p[1] >= lo[1]) & (p[1] <= hi[1]))[0]
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if not (zs.size and rows.size and cols.size):
        return None
    return slice(zs[0], zs[-1] + 1), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


# --- appearance ----------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, grid: _Grid, scale_mm: float) -> np.ndarray:
    """Unit-variance Gaussian random field smooth over about ``scale_mm`` (organ texture)."""
    sigma = [scale_mm / sp for sp in grid.spacing[::-1]]
    field = ndimage.gaussian_filter(rng.standard_normal(grid.shape), sigma, mode="reflect")
    return field / max(float(field.std()), 1e-12)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth multiplicative MR bias (coil sensitivity): exp of a random low-order polynomial of the
    normalised voxel position, always with a left-right gradient (30-45 % per half field of
    view)."""
    z, y, x = (np.linspace(-1.0, 1.0, n) for n in shape)
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    gx = rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 0.45)
    gy, gz, qx, qy = rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1), *rng.uniform(-0.15, 0.15, 2)
    return np.exp(gx * x + gy * y + gz * z + qx * x**2 + qy * y**2)


def _render(rng, task: _Task, dom: _Domain, grid: _Grid, tissue: np.ndarray, names) -> np.ndarray:
    """Intensities in the domain's stored dtype: tissue values, mild smooth texture inside the
    body, a slight blur (scanner point spread, so edges are not single-voxel steps), then noise --
    Gaussian for CT, Rician on top of a bias field for MR."""
    column = 0 if dom.key == "ct" else 1
    values = np.array([task.tissues[n][column] for n in names], float)[tissue]
    texture = _smooth_field(rng, grid, 4.0) * (tissue > 0)
    sigma_noise = task.noise[column]
    if dom.key == "ct":
        values = ndimage.gaussian_filter(values + 8.0 * texture, (0.35, 0.6, 0.6))
        values += sigma_noise * rng.standard_normal(grid.shape)
    else:
        values = ndimage.gaussian_filter(values * (1.0 + 0.06 * texture), (0.35, 0.6, 0.6))
        values *= _bias_field(rng, grid.shape)
        real = values + sigma_noise * rng.standard_normal(grid.shape)
        values = np.hypot(real, sigma_noise * rng.standard_normal(grid.shape))
    if dom.window is not None:  # stored already windowed to 0..255, as the real normalized CT
        lo, hi = dom.window
        values = (values - lo) / (hi - lo) * 255.0
    values = np.clip(values, *dom.value_range)
    if np.issubdtype(dom.image_dtype, np.integer):
        values = np.rint(values)
    return values.astype(dom.image_dtype)


def _labels(task_name: str, dom: _Domain, tissue: np.ndarray, names: list[str]) -> np.ndarray:
    """Label volume in the domain's stored codes and dtype (unlabelled tissues -> 0)."""
    codes = {n: c for c, n in LABEL_CODES[task_name][dom.key].items()}
    lut = np.array([codes.get(n, 0) for n in names], dom.label_dtype)
    return lut[tissue]


# --- writing -------------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a hidden temporary name in the same folder, then ``os.replace`` it into place, so
    an interrupted run never leaves a half-written file under the real name (readers glob
    ``image_*.nii.gz`` and never see the dot-prefixed temporary)."""
    stem, dot, ext = path.name.partition(".")
    tmp = path.with_name(f".{stem}.tmp{os.getpid()}{dot}{ext}")  # keep .nii.gz: picks the writer
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_nifti(array: np.ndarray, grid: _Grid, path: Path) -> None:
    image = sitk.GetImageFromArray(array)  # numpy (D, H, W) -> SimpleITK size (W, H, D)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    _atomic(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def _case_files(dom: _Domain, case_id: int) -> list[str]:
    """Relative paths of one case's image and label."""
    return [f"{dom.folder}/{name.format(id=case_id)}" for name in (dom.image_name, dom.label_name)]


def _write_case(
    task_name: str, dom: _Domain, size: PhantomSize, stream: list[int], case_id: int, out_dir: Path
) -> list[str]:
    """Draw, render and write one case (image + label); return the relative paths written."""
    task = _TASKS[task_name]
    assert task.scene is not None and task.tissues is not None and isinstance(dom, _Domain)
    rng = np.random.default_rng(stream)  # one stream per case: adding cases changes no other
    scene = task.scene(rng)
    grid, body_centre = _make_grid(rng, dom, size)
    roll = float(np.clip(rng.normal(0.0, 2.0), -4.0, 4.0))
    names = list(task.tissues)
    tissue = _paint(scene, _body_points(grid, body_centre, roll), names)
    arrays = (_render(rng, task, dom, grid, tissue, names), _labels(task_name, dom, tissue, names))
    if dom.header_lps:  # the real files' header: identity direction, origin 0, whatever the array
        grid = _Grid(grid.shape, grid.spacing, (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    paths = _case_files(dom, case_id)
    for array, rel in zip(arrays, paths, strict=True):
        _write_nifti(array, grid, out_dir / rel)
    return paths


def _write_json(path: Path, record: dict) -> None:
    text = json.dumps(record, indent=2) + "\n"
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_options(task: str, size: str, seed: int, n_cases: int | None) -> int:
    """Validate the options (UdasegError, exit code 2); return the number of cases per domain."""
    look_up_option(task, TASKS, what="phantom task")
    look_up_option(size, SIZES, what="phantom size")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UdasegError(f"phantom seed must be a non-negative integer, got {seed!r}",
                          hint="pass e.g. --seed 0", exit_code=2)  # fmt: skip
    n = SIZES[size].n_cases if n_cases is None else n_cases
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise UdasegError(f"phantom n_cases must be a positive integer, got {n_cases!r}",
                          hint="pass e.g. --n-cases 3, or leave it out for the size's default",
                          exit_code=2)  # fmt: skip
    return int(n)


def _previous_files(out_dir: Path, task: _Task) -> list[str]:
    """Files a previous phantom wrote here (from its phantom.json), so stale cases can be removed.

    Refuses a folder that holds NIfTI files in this layout but no phantom.json: that is somebody's
    real data, which must never be overwritten.
    """
    record = out_dir / "phantom.json"
    if record.is_file():
        try:
            return [str(f) for f in json.loads(record.read_text(encoding="utf-8")).get("files", [])]
        except (OSError, ValueError, AttributeError):
            return []
    for dom in task.domains:
        folder = out_dir / dom.folder
        if folder.is_dir() and any(folder.glob("*.nii*")):
            raise UdasegError(
                f"{folder} already holds NIfTI files that no phantom wrote; refusing to overwrite",
                hint="write the phantom to a new or empty directory",
                path=folder,
            )
    return []


def _remove_stale(out_dir: Path, previous: list[str], written: list[str]) -> None:
    """Delete files an earlier phantom wrote here that this run did not (e.g. more cases), so
    readers do not pick up cases that phantom.json no longer lists."""
    keep = set(written)
    for rel in previous:
        if rel not in keep and ".." not in Path(rel).parts and not Path(rel).is_absolute():
            (out_dir / rel).unlink(missing_ok=True)


def _describe(summary: dict) -> str:
    """PHANTOM.md: what this folder is, how it was made, and the label codes per domain."""
    lines = [
        "# Synthetic phantom (not patient data)",
        "",
        f"Synthetic cross-modality `{summary['task']}` dataset written by "
        "`udaseg.data.phantom.write_phantom` for demos and tests. Shapes are ellipsoid-like "
        "organs with a deliberate appearance gap between the two domains; nothing here comes "
        "from a patient.",
        "",
        f"- task: {summary['task']}; layout: {summary['layout']} (the real dataset's file layout)",
        f"- seed: {summary['seed']}; size: {summary['size']}; cases: "
        + ", ".join(f"{d} {n}" for d, n in summary["n_cases"].items()),
    ]
    classes = _CLASSES[summary["task"]]
    for dom in _TASKS[summary["task"]].domains:
        codes = sorted(LABEL_CODES[summary["task"]][dom.key].items())
        main = ", ".join(f"{c} {n}" for c, n in codes if n in classes)
        other = ", ".join(f"{c} {n}" for c, n in codes if n not in classes)
        extra = f"; to map to background: {other}" if other else ""
        lines.append(f"- {dom.key}: `{dom.folder}/{dom.image_name}`, `{dom.label_name}`; "
                     f"label codes: {main}{extra}")  # fmt: skip
    lines += ["", "Regenerate: `write_phantom(task, out_dir, seed=..., size=...)`; the same seed "
              "gives the same arrays.", ""]  # fmt: skip
    return "\n".join(lines)


def write_phantom(
    task: str, out_dir: Path, *, seed: int = 0, n_cases: int | None = None, size: str = "small"
) -> dict:
    """Write a synthetic cross-modality dataset under ``out_dir`` in a real dataset's file layout.

    Args:
        task: ``abdomen`` (SSL-ALPNet normalized SABS CT / CHAOS MR T2 layout), ``cardiac``
            (MM-WHS layout) or ``mscmrseg`` (MS-CMRSeg bSSFP C0 + LGE short-axis stacks); see
            the module docstring for files, dtypes and label codes.
        out_dir: created if needed. A folder holding NIfTI data that no phantom wrote is refused.
        seed: non-negative integer; the same seed gives identical arrays.
        n_cases: cases per domain (default: 6 for ``small``, 3 for ``tiny``).
        size: ``small`` (96x96 in-plane, CT 48 / MR 16, C0 8 / LGE 12 slices) or ``tiny``
            (48x48, 14 / 10, 6 / 8).

    Returns:
        summary dict (also written to ``out_dir/phantom.json``): task, layout, seed, size,
        complete (True), n_cases and case_ids per domain, label_codes per domain, files
        (relative to out_dir, in write order, ending with PHANTOM.md and phantom.json) and
        seconds. While writing, phantom.json holds a marker with ``complete: false``.
    """
    start = time.perf_counter()
    n = check_options(task, size, seed, n_cases)
    spec, out_dir = _TASKS[task], Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    case_ids = {dom.key: spec.case_ids(dom.key, n) for dom in spec.domains}
    planned = [f for dom in spec.domains for c in case_ids[dom.key] for f in _case_files(dom, c)]
    planned += ["PHANTOM.md", "phantom.json"]
    previous = _previous_files(out_dir, spec)
    # mark the folder as a phantom's before the first volume lands, listing every file this or the
    # previous run may leave, so a rerun after an interruption recognises and cleans them
    marker = {"task": task, "complete": False, "files": sorted({*previous, *planned})}
    _write_json(out_dir / "phantom.json", marker)
    files: list[str] = []
    write_case = spec.write_case or _write_case
    for d_index, dom in enumerate(spec.domains):
        (out_dir / dom.folder).mkdir(exist_ok=True)
        for c_index, case_id in enumerate(case_ids[dom.key]):
            stream = [int(seed), list(_TASKS).index(task), d_index, c_index]
            files += write_case(task, dom, SIZES[size], stream, case_id, out_dir)
    files += ["PHANTOM.md", "phantom.json"]
    _remove_stale(out_dir, marker["files"], files)
    summary = {
        "task": task, "layout": spec.layout, "seed": int(seed), "size": size, "complete": True,
        "n_cases": {k: len(v) for k, v in case_ids.items()}, "case_ids": case_ids,
        "label_codes": {
            k: {str(c): name for c, name in v.items()} for k, v in LABEL_CODES[task].items()
        },
        "files": files,
    }  # fmt: skip
    _atomic(
        out_dir / "PHANTOM.md", lambda tmp: tmp.write_text(_describe(summary), encoding="utf-8")
    )
    summary["seconds"] = round(time.perf_counter() - start, 3)
    _write_json(out_dir / "phantom.json", summary)
    return summary
