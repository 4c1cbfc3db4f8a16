"""Anatomy of the phantoms: smooth solids (blobs, capsules) and the abdominal and cardiac scenes.

Shapes live in a body frame in mm (x to the patient's left, y posterior, z superior, as LPS).
Each scene function draws every random number it needs from the generator it is given, in a
fixed order, so a case's anatomy depends only on its seed (:mod:`udaseg.data.phantom` renders it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Half-length in mm of shapes that are infinite along z (body outline, spine, vessels).
ENDLESS = 1.0e4

Points = tuple[np.ndarray, np.ndarray, np.ndarray]  # body-frame x, y, z in mm, broadcastable


@dataclass(frozen=True)
class Blob:
    """Smooth ellipsoid-like solid: an ellipsoid whose surface is perturbed by a few low-frequency
    sinusoids in its normalised coordinates (so organs are not perfect ellipsoids)."""

    center: np.ndarray  # (3,) mm, body frame
    semi: np.ndarray  # (3,) semi-axes in mm
    axes: np.ndarray  # (3, 3) rows = the blob's axes in the body frame
    wobble: np.ndarray  # (k, 4) rows = (wx, wy, wz, phase) of the surface perturbation
    amp: float

    def inside(self, p: Points) -> np.ndarray:
        d = [p[i] - self.center[i] for i in range(3)]
        q = [sum(self.axes[k, i] * d[i] for i in range(3)) / self.semi[k] for k in range(3)]
        radius = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
        edge = 1.0
        for wx, wy, wz, phase in self.wobble:
            edge = edge + self.amp * np.sin(wx * q[0] + wy * q[1] + wz * q[2] + phase)
        return radius < edge

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Body-frame box (lo, hi) in mm that contains the blob whatever its rotation."""
        reach = float(self.semi.max()) * (1.0 + len(self.wobble) * self.amp)
        return self.center - reach, self.center + reach


@dataclass(frozen=True)
class Tube:
    """Capsule around the segment p0-p1 (vessels)."""

    p0: np.ndarray
    p1: np.ndarray
    radius: float

    def inside(self, p: Points) -> np.ndarray:
        d = self.p1 - self.p0
        rel = [p[i] - self.p0[i] for i in range(3)]
        t = np.clip(sum(rel[i] * d[i] for i in range(3)) / float(d @ d), 0.0, 1.0)
        dist2 = sum((rel[i] - t * d[i]) ** 2 for i in range(3))
        return dist2 < self.radius**2

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.minimum(self.p0, self.p1), np.maximum(self.p0, self.p1)
        return lo - self.radius, hi + self.radius


@dataclass(frozen=True)
class Scene:
    """Body outline (filled with fat), its inner wall (filled with ``fill``) and the parts painted
    in order inside the inner wall -- later parts win where they overlap, like adjacent organs."""

    body: Blob
    inner: Blob
    fill: str
    parts: list[tuple[str, Blob | Tube]]


def rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix from angles in degrees about z, y and x (applied in that order)."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


def blob(rng, center, semi, *, scale, yaw=0.0, turn=8.0, tilt=5.0, jitter=2.5, amp=0.05, axes=None):
    """A randomly varied blob: position jitter (mm), own size scaling, slight rotation, wobble.

    ``center``/``semi`` are nominal body-frame mm scaled by the case's body ``scale``. All random
    draws happen whatever the arguments, so every case consumes its stream identically.
    """
    shift = np.clip(rng.normal(0.0, jitter, 3), -2 * jitter, 2 * jitter)
    grow = rng.uniform(0.9, 1.1)
    angles = rng.normal(0.0, 1.0, 3) * (turn, tilt, tilt)
    # low spatial frequencies only (|w| <= 4 per unit radius): lobed, not lumpy, outlines
    waves = np.clip(rng.normal(0.0, 2.0, (3, 3)), -4.0, 4.0)
    wobble = np.column_stack([waves, rng.uniform(0, 2 * np.pi, 3)])
    rot = rotation(yaw + angles[0], angles[1], angles[2])
    if axes is not None:  # the blob's own frame (heart long axis), slightly perturbed
        rot = np.asarray(axes).T @ rotation(angles[0], angles[1], angles[2])
    center = np.asarray(center, float) * scale + shift
    return Blob(center, np.asarray(semi, float) * scale * grow, rot.T, wobble, amp)


def cylinder(rng, xy, semi_xy, *, scale, jitter=1.5) -> Blob:
    """A blob endless along z (body outline, spine, muscles): no tilt, in-plane jitter only."""
    b = blob(rng, (*xy, 0.0), (*semi_xy, 1.0), scale=scale, turn=4.0, tilt=0.0, jitter=jitter)
    center = np.array([b.center[0], b.center[1], 0.0])
    return Blob(center, np.array([b.semi[0], b.semi[1], ENDLESS]), b.axes, b.wobble, 0.02)


def vessel(rng, xy, radius, *, scale) -> Tube:
    """A vertical vessel running through the whole volume."""
    x, y = np.asarray(xy, float) * scale + np.clip(rng.normal(0.0, 1.5, 2), -3, 3)
    return Tube(np.array([x, y, -ENDLESS]), np.array([x, y, ENDLESS]), radius * scale)


# --- scenes ---------------------------------------------------------------------------------------


def abdomen_scene(rng: np.random.Generator) -> Scene:
    """Upper abdomen, nominal mm (about 0.7x adult size so it fits the small matrix): liver on the
    patient's right (image left in an LPS axial slice), spleen left, kidneys posterior beside the
    spine, stomach left-anterior, aorta and IVC in front of the spine, lung bases above the
    liver."""
    s = rng.uniform(0.92, 1.06)  # body size
    wide = rng.uniform(0.95, 1.05)
    body = cylinder(rng, (0, 0), (64 * wide, 48), scale=s, jitter=0.0)
    inner = Blob(body.center, body.semi - (8 * s, 7 * s, 0), body.axes, body.wobble, body.amp)
    parts = [
        ("muscle", cylinder(rng, (-16, 36), (12, 8), scale=s)),
        ("muscle", cylinder(rng, (16, 36), (12, 8), scale=s)),
        ("lung", blob(rng, (-34, 10, 62), (26, 30, 32), scale=s)),
        ("lung", blob(rng, (34, 10, 62), (26, 30, 32), scale=s)),
        *[("bowel", bowel(rng, s)) for _ in range(4)],
        ("bone", cylinder(rng, (0, 30), (10, 9), scale=s, jitter=0.5)),
        ("aorta", vessel(rng, (4, 16), 6.5, scale=s)),
        ("ivc", vessel(rng, (-12, 12), 6.0, scale=s)),
        ("liver", blob(rng, (-22, -2, 10), (30, 28, 21), scale=s)),
        ("gallbladder", blob(rng, (-16, -20, -6), (7, 8, 11), scale=s)),
        ("stomach", blob(rng, (20, -20, 10), (16, 12, 15), scale=s)),
        ("spleen", blob(rng, (30, 11, 16), (11, 18, 12), scale=s, yaw=35.0)),
        ("kidney_r", blob(rng, (-26, 17, -12), (10, 12, 17), scale=s, yaw=-20.0)),
        ("kidney_l", blob(rng, (26, 17, -9), (10, 12, 17), scale=s, yaw=20.0)),
    ]
    return Scene(body, inner, "visceral", parts)


def bowel(rng: np.random.Generator, s: float) -> Blob:
    """An unlabelled bowel loop somewhere in the lower anterior abdomen (a distractor)."""
    center = (rng.uniform(-30, 30), rng.uniform(-30, 0), rng.uniform(-50, -15))
    return blob(rng, center, (10, 8, 10), scale=s, turn=40.0, amp=0.1)


def heart_axes(rng: np.random.Generator) -> np.ndarray:
    """Rows e1, e2, a: a right-handed frame whose third axis a is the LV long axis (base to apex:
    towards patient left, anterior and inferior), randomly tipped by a few degrees."""
    a = np.array([0.55, -0.45, -0.7]) + rng.normal(0.0, 0.06, 3)
    a /= np.linalg.norm(a)
    e1 = np.cross(a, (0.0, 0.0, 1.0))
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(a, e1), a])


def cardiac_scene(rng: np.random.Generator) -> Scene:
    """Thorax with the heart slightly left and anterior: LV cavity inside a myocardium shell, RV in
    front-right, LA behind-above the LV base, RA right of it, ascending aorta and pulmonary trunk as
    tubes rising from the base, lungs laterally, descending aorta beside the spine."""
    s = rng.uniform(0.92, 1.06)
    wide = rng.uniform(0.95, 1.05)
    body = cylinder(rng, (0, 0), (66 * wide, 50), scale=s, jitter=0.0)
    inner = Blob(body.center, body.semi - (8 * s, 7 * s, 0), body.axes, body.wobble, body.amp)
    frame = heart_axes(rng)
    h = np.array([6.0, -8.0, -10.0]) * s + np.clip(rng.normal(0.0, 2.0, 3), -4, 4)
    lv_semi = np.array([15.0, 15.0, 24.0]) * rng.uniform(0.9, 1.1)
    lv = blob(rng, h / s, lv_semi, scale=s, turn=0.0, tilt=0.0, jitter=0.0, amp=0.03, axes=frame)
    myo = Blob(lv.center, lv.semi + 7.0 * s, lv.axes, lv.wobble, lv.amp)
    root = h + np.array([-10.0, 2.0, 16.0]) * s  # aortic valve
    outflow = h + np.array([-6.0, -22.0, 12.0]) * s  # pulmonary valve
    parts = [
        ("lung", blob(rng, (-34, 2, 30), (24, 34, 70), scale=s, tilt=0.0)),
        ("lung", blob(rng, (34, 2, 30), (24, 34, 70), scale=s, tilt=0.0)),
        ("bone", cylinder(rng, (0, 34), (10, 9), scale=s, jitter=0.5)),
        ("bone", cylinder(rng, (0, -40), (9, 4), scale=s, jitter=0.5)),
        ("desc_aorta", vessel(rng, (14, 27), 7.0, scale=s)),
        ("rv", blob(rng, h / s + (-16, -14, -6), (16, 12, 26), scale=s, amp=0.04, axes=frame)),
        ("ra", blob(rng, h / s + (-26, 6, 24), (14, 13, 15), scale=s, amp=0.04)),
        ("pa", Tube(outflow, outflow + np.array([14.0, 10.0, 26.0]) * s, 8.0 * s)),
        ("myo", myo),
        ("lv", lv),
        ("la", blob(rng, h / s + (-4, 22, 24), (15, 10, 13), scale=s, amp=0.04)),
        ("aorta", Tube(root, root + np.array([-4.0, 2.0, 32.0]) * s, 10.0 * s)),
    ]
    return Scene(body, inner, "soft", parts)
