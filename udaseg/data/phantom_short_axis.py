"""The cardiac short-axis phantom: bSSFP (C0) and LGE stacks laid out like the MS-CMRSeg release.

:mod:`udaseg.data.phantom` writes the files (task ``mscmrseg``); this module draws one case's
anatomy and renders its stack. Everything is defined in the heart's own short-axis frame, in mm:
``u`` from the septum to the lateral wall, ``v`` from the anterior to the inferior LV wall, ``w``
along the long axis from the apex to the base (the frame of udaseg's ``short-axis`` view,
:data:`udaseg.data.geometry.SHORT_AXIS_FRAME`, which points about 45 degrees from every body axis).

Anatomy: an LV cavity (a truncated ellipsoid, open at the base), a myocardial shell around it, an
RV cavity as a crescent wrapped around the septum that stops short of the apex, an unlabelled RV
free wall and epicardial fat, and body tissue, lungs and liver around them.

Contrast: bSSFP has bright blood (LV 0.85, RV 0.8), dark myocardium (0.22), bright fat; LGE has
grey blood (0.35), nulled myocardium (0.04) with one or two bright transmural scar patches (0.9,
still labelled myocardium, as in MS-CMRSeg), bright fat. Both have a smooth coil bias and Rician
noise; C0 is stored 0..1 and LGE about 0..0.4, float32, like the release.

Geometry, as in the release: both sequences cover a 144 mm square (192 voxels of 0.75 mm there,
96 or 48 here); C0 has few thick slices, LGE more thinner ones. The stack axes point along the
heart (oblique), and the files are stored the way the real ones are (x towards the lateral wall,
y towards the anterior wall, z apex -> base); a rotation of a few degrees about the long axis
makes the nearest body axes read ``PSR`` in some cases and ``LSP`` in others, as in the release.
Every third case is stored transposed in-plane with the slices reversed (its header saying so),
so a reader that ignores the header sees it mirrored. The C0 headers, like the release's, give
an in-plane spacing 1/0.6 times the true one (the manifest's ``assume_spacing_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from udaseg.data.geometry import SHORT_AXIS_FRAME

FOV_MM = 144.0
# the C0 header's in-plane spacing is the true one divided by this (as in the release)
C0_HEADER_SCALE = 0.6
# (C0, LGE) long-axis coverage in mm: the stack spans the apex to above the base
_COVERAGE_MM = {"c0": 92.0, "lge": 84.0}

# tissue -> (bSSFP value, LGE value), before bias and noise; LGE values are scaled by 0.4
TISSUES = {
    "air": (0.02, 0.02), "body": (0.35, 0.25), "lung": (0.06, 0.03), "liver": (0.3, 0.2),
    "fat": (0.7, 0.6), "rv_wall": (0.25, 0.08), "myo": (0.22, 0.04), "scar": (0.22, 0.9),
    "lv": (0.85, 0.35), "rv": (0.8, 0.33),
}  # fmt: skip
_LGE_SCALE = 0.4
_NOISE = {"c0": 0.02, "lge": 0.03}
# tissue -> label structure (the rest is background)
LABELLED = {"myo": "myo", "scar": "myo", "lv": "lv", "rv": "rv"}


@dataclass(frozen=True)
class Heart:
    """One case's anatomy, in mm in the heart frame (see the module docstring)."""

    lv_radius: float  # LV cavity semi-axis along u (along v: 0.95 of it)
    wall: float  # myocardial thickness
    w_centre: float  # long-axis centre of the LV ellipsoids (w = 0: middle of the stack)
    lv_half_length: float
    base: float  # w of the valve plane: nothing labelled above it
    rv_width: float  # RV crescent semi-axis along u
    rv_angle: float  # degrees the RV sits off the u axis (towards -v when positive)
    scars: tuple[tuple[float, float, float], ...]  # (angle deg, w start, w length) per patch


def draw_heart(rng: np.random.Generator) -> Heart:
    """Draw a heart; every number comes from ``rng`` in a fixed order."""
    scale = rng.uniform(0.88, 1.12)
    n_scars = int(rng.integers(1, 3))
    scars = tuple(
        (float(rng.uniform(0, 360)), float(rng.uniform(-25, 10)), float(rng.uniform(15, 30)))
        for _ in range(n_scars)
    )
    return Heart(
        lv_radius=22.0 * scale,
        wall=float(rng.uniform(7.0, 11.0)),
        w_centre=float(rng.uniform(4.0, 10.0)),
        lv_half_length=42.0 * scale,
        base=float(rng.uniform(32.0, 38.0)),
        rv_width=16.0 * scale,
        rv_angle=float(rng.uniform(-15.0, 15.0)),
        scars=scars,
    )


@dataclass(frozen=True)
class Stack:
    """Where a stack's voxels are: numpy ``shape`` (D, H, W); ``spacing`` (true) and
    ``header_spacing`` in mm, ``origin`` in mm, SimpleITK (x, y, z) order; ``direction`` (3, 3),
    columns = the x, y, z index axes in LPS."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    header_spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def draw_stack(
    rng: np.random.Generator, sequence: str, matrix: int, slices: int, variant: int
) -> tuple[Stack, np.ndarray, np.ndarray]:
    """Draw a stack's grid; return it, the heart frame (3, 3) (columns u, v, w in LPS) and the
    heart centre (LPS mm).

    ``variant`` 0 / 1: stored as the release is, rotated about the long axis so the header's
    nearest body axes read PSR / LSP; 2: in-plane axes swapped and slices reversed.
    """
    c, r, n = (SHORT_AXIS_FRAME[:, i] for i in range(3))
    psi = rng.uniform(8.0, 18.0) * (1.0 if variant != 1 else -1.0)
    # planning: the scanner's stack frame, a few degrees off the heart's own axes
    tilt = _rotation(rng.normal(0.0, 1.0, 3), rng.uniform(0.0, 3.0))
    heart = _rotation(n, psi) @ np.column_stack([c, r, n])
    scanner = tilt @ heart
    x, y, z = scanner[:, 0], -scanner[:, 1], scanner[:, 2]  # as the release stores them
    direction = np.column_stack([y, x, -z] if variant == 2 else [x, y, z])
    inplane = FOV_MM / matrix
    thick = _COVERAGE_MM[sequence] / slices * rng.uniform(0.95, 1.05)
    counts = (matrix, matrix, slices)
    spacing = (inplane, inplane, thick)
    centre = np.array([rng.uniform(-40, 40), rng.uniform(-80, 0), rng.uniform(-150, -50)])
    fov_centre = centre + heart @ np.array([*rng.uniform(-4.0, 4.0, 2), rng.uniform(-3, 3)])
    origin = fov_centre - direction @ (0.5 * (np.array(counts) - 1) * np.array(spacing))
    header = spacing
    if sequence == "c0":
        header = (inplane / C0_HEADER_SCALE, inplane / C0_HEADER_SCALE, thick)
    stack = Stack(
        (slices, matrix, matrix),
        spacing,
        header,
        tuple(float(v) for v in origin),  # type: ignore[arg-type]
        direction,
    )
    return stack, heart, centre


def heart_coordinates(stack: Stack, heart: np.ndarray, centre: np.ndarray) -> list[np.ndarray]:
    """u, v, w in mm of every voxel, each broadcastable to the stack's (D, H, W)."""
    d, h, w = stack.shape
    index = [np.arange(w)[None, None, :], np.arange(h)[None, :, None], np.arange(d)[:, None, None]]
    # heart coordinates are affine in the voxel index: q = H^T (origin + D diag(s) idx - centre)
    linear = heart.T @ stack.direction @ np.diag(stack.spacing)
    offset = heart.T @ (np.asarray(stack.origin) - centre)
    return [offset[a] + sum(linear[a, i] * index[i] for i in range(3)) for a in range(3)]


def paint(heart: Heart, uvw: list[np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """Tissue map (D, H, W) of indices into ``list(TISSUES)``."""
    names = list(TISSUES)
    u, v, w = (np.broadcast_to(a, shape) for a in uvw)
    tissue = np.full(shape, names.index("body"), np.uint8)
    body = (u / 130.0) ** 2 + ((v + 10.0) / 100.0) ** 2 < 1.0
    tissue[~body] = names.index("air")
    tissue[((u - 62.0) / 22.0) ** 2 + ((v + 10.0) / 45.0) ** 2 < 1.0] = names.index("lung")
    tissue[((u + 35.0) / 40.0) ** 2 + ((v + 62.0) / 16.0) ** 2 < 1.0] = names.index("lung")
    tissue[((v - 70.0) / 25.0) ** 2 + (u / 60.0) ** 2 + ((w + 40.0) / 40.0) ** 2 < 1.0] = (
        names.index("liver")
    )

    def ellipsoid(grow: float) -> np.ndarray:
        a, b = heart.lv_radius + grow, 0.95 * heart.lv_radius + grow
        length = heart.lv_half_length + grow
        return (u / a) ** 2 + (v / b) ** 2 + ((w - heart.w_centre) / length) ** 2 < 1.0

    below_base = w < heart.base
    lv, outer = ellipsoid(0.0) & below_base, ellipsoid(heart.wall) & below_base
    # the RV: an ellipse beside the septum (rotated by rv_angle), from 15 mm above the apex up to
    # just past the base, minus the LV and its wall: a crescent wrapped around the septum
    t = np.deg2rad(heart.rv_angle)
    ru = np.cos(t) * u - np.sin(t) * v
    rv_v = np.sin(t) * u + np.cos(t) * v
    apex = heart.w_centre - heart.lv_half_length
    rv_len = 0.5 * (heart.base + 4.0 - (apex + 15.0))
    rv_mid = apex + 15.0 + rv_len
    reach = heart.lv_radius + heart.wall

    def rv_shape(grow: float) -> np.ndarray:
        across = ((ru + reach - 4.0) / (heart.rv_width + grow)) ** 2
        along = (rv_v / (reach + 8.0 + grow)) ** 2 + ((w - rv_mid) / (rv_len + grow)) ** 2
        return across + along < 1.0

    rv = rv_shape(0.0) & ~ellipsoid(heart.wall + 1.0)
    fat = (ellipsoid(heart.wall + 3.0) & (w < heart.base + 3.0)) | rv_shape(5.0)
    tissue[fat] = names.index("fat")
    tissue[rv_shape(3.0) & ~outer] = names.index("rv_wall")
    tissue[outer] = names.index("myo")
    angle = np.rad2deg(np.arctan2(v, u)) % 360.0
    for centre_deg, w_start, length in heart.scars:
        off = np.abs((angle - centre_deg + 180.0) % 360.0 - 180.0)
        scar = outer & ~lv & (off < 25.0) & (w > w_start) & (w < w_start + length)
        tissue[scar] = names.index("scar")
    tissue[rv] = names.index("rv")
    tissue[lv] = names.index("lv")
    return tissue


def render(
    rng: np.random.Generator, sequence: str, tissue: np.ndarray, spacing: tuple
) -> np.ndarray:
    """Intensities (D, H, W) float32: tissue values with mild texture, a slight in-plane blur
    (partial volume), a smooth coil bias and Rician noise; C0 clipped to 0..1."""
    column = 0 if sequence == "c0" else 1
    values = np.array([TISSUES[name][column] for name in TISSUES], float)[tissue]
    sigma_mm = 4.0
    texture = ndimage.gaussian_filter(
        rng.standard_normal(tissue.shape), [sigma_mm / s for s in spacing[::-1]]
    )
    texture /= max(float(texture.std()), 1e-12)
    values = ndimage.gaussian_filter(values * (1.0 + 0.05 * texture), (0.2, 0.6, 0.6))
    rows, cols = (np.linspace(-1.0, 1.0, n) for n in tissue.shape[1:])
    gy, gx = rng.uniform(-0.25, 0.25, 2)
    values = values * np.exp(gy * rows[None, :, None] + gx * cols[None, None, :])
    sigma = _NOISE[sequence]
    real = values + sigma * rng.standard_normal(tissue.shape)
    values = np.hypot(real, sigma * rng.standard_normal(tissue.shape))
    values = np.clip(values, 0.0, 1.0) if sequence == "c0" else values * _LGE_SCALE
    return values.astype(np.float32)


def labels(tissue: np.ndarray, codes: dict[str, int]) -> np.ndarray:
    """Label volume (D, H, W) int16 with ``codes`` (structure -> code), as the release stores."""
    names = list(TISSUES)
    lut = np.array([codes.get(LABELLED.get(name, ""), 0) for name in names], np.int16)
    return lut[tissue]


def render_case(
    rng: np.random.Generator,
    sequence: str,
    matrix: int,
    slices: int,
    variant: int,
    codes: dict[str, int],
) -> tuple[np.ndarray, np.ndarray, Stack]:
    """Draw and render one case: image (D, H, W) float32, label (D, H, W) int16, its stack."""
    heart = draw_heart(rng)
    stack, frame, centre = draw_stack(rng, sequence, matrix, slices, variant)
    tissue = paint(heart, heart_coordinates(stack, frame, centre), stack.shape)
    return render(rng, sequence, tissue, stack.spacing), labels(tissue, codes), stack
