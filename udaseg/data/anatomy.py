"""Anatomy checks of preprocessed label volumes: do all cases face the same way?

Headers can be wrong or merely ambiguous (an oblique stack's nearest body axes flip between cases),
so orientation is verified with the anatomy itself: where one structure lies relative to another,
in array coordinates, must be the same in every case of a dataset after preprocessing.

For cardiac short-axis stacks (:func:`short_axis_layout`): the right ventricle lies beside the left
ventricle, towards the septum (the image left in udaseg's ``short-axis`` view); it ends before the
apex, so its centroid lies basal to the LV cavity's; and the myocardium surrounds the LV cavity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AXES = ("S", "H", "W")


@dataclass(frozen=True)
class ShortAxisLayout:
    """Where the RV lies relative to the LV cavity in one (S, H, W) label volume.

    ``rv_offset_mm``: RV centroid minus LV-cavity centroid, mm along (S, H, W);
    ``inplane_axis`` / ``inplane_sign``: the in-plane axis (``H`` or ``W``) along which that offset
    is largest, and its sign; ``slice_sign``: the sign of the offset along S (+1: the RV centroid
    is at higher slice numbers); ``myo_around_lv``: the share of the voxels just outside the LV
    cavity (in-plane ring, 8-neighbourhood) that are myocardium.
    """

    rv_offset_mm: tuple[float, float, float]
    inplane_axis: str
    inplane_sign: int
    slice_sign: int
    myo_around_lv: float

    @property
    def key(self) -> tuple[str, int, int]:
        """What must agree between cases: (in-plane axis, its sign, slice sign)."""
        return (self.inplane_axis, self.inplane_sign, self.slice_sign)

    def describe(self) -> str:
        s, h, w = self.rv_offset_mm
        side = f"{'+' if self.inplane_sign > 0 else '-'}{self.inplane_axis}"
        return (
            f"RV-LV (S, H, W) = ({s:+.1f}, {h:+.1f}, {w:+.1f}) mm, RV towards {side}, "
            f"{'+' if self.slice_sign > 0 else '-'}S; myocardium around LV {self.myo_around_lv:.2f}"
        )


def short_axis_layout(
    label: np.ndarray,
    spacing_shw: tuple[float, float, float],
    *,
    myo: int,
    lv: int,
    rv: int,
) -> ShortAxisLayout | None:
    """The RV/LV layout of one short-axis label volume.

    Args:
        label: (S, H, W) integer class ids.
        spacing_shw: voxel spacing in mm along (S, H, W).
        myo, lv, rv: the class ids of the myocardium, LV cavity and RV cavity.

    Returns:
        The layout, or None when the LV cavity or the RV is absent.
    """
    lv_mask, rv_mask = label == lv, label == rv
    if not (lv_mask.any() and rv_mask.any()):
        return None
    offset = (np.argwhere(rv_mask).mean(0) - np.argwhere(lv_mask).mean(0)) * np.asarray(
        spacing_shw, float
    )
    axis = 1 if abs(offset[1]) >= abs(offset[2]) else 2
    ring = ndimage.binary_dilation(lv_mask, np.ones((1, 3, 3), bool)) & ~lv_mask
    return ShortAxisLayout(
        rv_offset_mm=tuple(round(float(v), 2) for v in offset),  # type: ignore[arg-type]
        inplane_axis=AXES[axis],
        inplane_sign=1 if offset[axis] > 0 else -1,
        slice_sign=1 if offset[0] > 0 else -1,
        myo_around_lv=float((label[ring] == myo).mean()) if ring.any() else 0.0,
    )


def disagreements(
    layouts: dict[str, ShortAxisLayout | None], *, min_myo_around_lv: float = 0.5
) -> dict[str, str]:
    """Cases whose layout differs from the majority's, or whose LV cavity is not mostly enclosed
    by myocardium (a label/image mismatch, or not a short-axis stack), or with no LV or RV.

    Returns:
        case id -> why, empty when every case agrees.
    """
    found = {case: layout for case, layout in layouts.items() if layout is not None}
    problems = {case: "no LV cavity or no RV" for case, layout in layouts.items() if not layout}
    if found:
        keys = [layout.key for layout in found.values()]
        majority = max(set(keys), key=keys.count)
        for case, layout in found.items():
            if layout.key != majority:
                problems[case] = f"{layout.describe()}; most cases: RV towards {_side(majority)}"
            elif layout.myo_around_lv < min_myo_around_lv:
                problems[case] = f"myocardium surrounds only {layout.myo_around_lv:.0%} of the LV"
    return problems


def _side(key: tuple[str, int, int]) -> str:
    axis, sign, slice_sign = key
    return f"{'+' if sign > 0 else '-'}{axis}, {'+' if slice_sign > 0 else '-'}S"
