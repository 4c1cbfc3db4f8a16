"""Random spatial and intensity augmentation of training batches, in torch, on any device.

Layouts: images (N, C, H, W) or (N, C, D, H, W) float, in the store's normalised intensity range;
labels (N, H, W) or (N, D, H, W) integer class ids (0 = background), or None for unlabelled
(target-domain) batches. D is the slice (through-plane) axis.

Each sample is augmented with probability ``p``; an augmented sample gets, in this order:

1. a random in-plane affine transform (rotation, isotropic scaling, shear, translation) and, with
   ``elastic_alpha > 0``, a smooth random in-plane displacement field, composed into one sampling
   grid and applied with ``grid_sample``: bilinear for images, nearest for labels (so labels stay
   class ids of the input). Outside the input, images are padded with their own minimum per
   sample and channel (the background of a [-1, 1]-normalised scan) and labels with 0;
2. flips along ``flip_axes`` (each with probability 1/2);
3. intensity gamma and Gaussian noise, images only, keeping each image inside its own range;
4. with ``intensity_net > 0``, a random re-rendering of the intensities (images only): the image
   goes through a shallow network with freshly drawn weights (a few 1x1 or 3x3 convolutions with
   leaky ReLUs between them, a different network per sample), is blended with the original by a
   random weight and given back the original's mean and spread, clipped to its own range. This
   is the global intensity non-linear augmentation (GIN) of Ouyang et al., "Causality-inspired
   single-source domain generalization for medical image segmentation" (TMI 2022): shapes stay,
   the intensity of each tissue changes non-monotonically and differently for every sample, so a
   segmenter cannot rely on one modality's contrast. It is not part of the five adaptation
   papers; udaseg offers it because it is the cheapest strong remedy for CT <-> MR contrast
   changes. With ``ipa > 0`` a re-rendered sample is instead a spatial blend of two such
   renderings through a smooth random map, the interventional pseudo-correlation augmentation
   (IPA) of the same paper: the intensity mapping itself then varies across the image, as a
   scanner's bias field or a contrast agent's uptake does, so the segmenter cannot take one
   global intensity rule for granted either;
5. with ``location_scale > 0``, a random location-scale re-mapping of the intensities, after the
   idea of SLAug (Su et al., "Rethinking data augmentation for single-source domain
   generalization in medical image segmentation", AAAI 2023): the image, scaled to [0, 1]
   between its own minimum and maximum, goes through a random piecewise-linear tone curve (kept
   monotone, rising or falling, half of the time), then ``a * v + b`` with a random scale ``a``
   and shift ``b``, and back to its own range. Either the whole image gets one curve (global)
   or, with probability ``location_scale_local`` and labels given, each labelled class and the
   background get their own curve (local): organs' contrasts against each other and against
   their surroundings change independently, which is what a change of modality does. (SLAug
   also fuses the two by a saliency map of the segmenter's gradients; udaseg leaves that out,
   as it needs a second backward pass per step.)

3D volumes are transformed slice by slice in the (H, W) plane: rotation is about the slice axis
and the elastic displacement has no through-plane component, because the volumes are anisotropic
(through-plane spacing about 4x the in-plane one), where an out-of-plane rotation would mix
slices several millimetres apart. The displacement field still varies smoothly along D.

Conventions, in the (H, W) plane shown with row 0 at the top and column 0 at the left:

* a positive angle rotates the content counter-clockwise; 90 degrees equals
  ``torch.rot90(x, 1, dims=(-2, -1))`` (and ``np.rot90``);
* scale > 1 enlarges the content (zoom in); shear ``k`` moves the point at (x, y) by
  (k_x y, k_y x) (pixel units from the centre);
* translation is a fraction of the image size; positive moves the content right (+W) / down (+H);
* the transform is about the image centre; it maps pixel units, so non-square images do not
  distort.

Randomness: every draw comes from the ``torch.Generator`` passed in (drawn on the CPU, then moved
to the images' device), and a call draws the same amount whatever the outcome (whether a sample
is augmented, its angle, ...): the stream depends only on the batch shape and the config, so
saving and restoring the generator's state makes training exactly resumable. ``config=None`` or
``p=0`` returns the inputs themselves and draws nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor

from udaseg.errors import UdasegError

Range = tuple[float, float]

# knots of the random tone curves of the location-scale re-mapping, evenly spaced on [0, 1]
TONE_KNOTS = 6
# curves drawn per sample for the local re-mapping: class c (and the background, 0) takes curve
# c % TONE_REGIONS, so the draws do not depend on how many classes a batch happens to show
TONE_REGIONS = 16


@dataclass
class AugmentConfig:
    """What :func:`augment` draws from; all ranges are uniform.

    rotation_deg: in-plane angle in degrees, a symmetric bound r (uniform in [-r, r]) or a range.
    scale: isotropic in-plane zoom factor range (1 = none).
    shear: bound on each of the two shear coefficients (dimensionless; 0.05 tilts ~3 degrees).
    translate: bound on the shift along H and along W, as a fraction of that side.
    flip_axes: spatial axes to flip, each with probability 1/2, counted over the spatial dims
        (2D: 0 = H, 1 = W; 3D: 0 = D, 1 = H, 2 = W; negative counts from the end). Empty by
        default: left-right flips swap organs' sides, which real anatomy never does.
    elastic_alpha: standard deviation in voxels of the in-plane displacement at the control points
        (0 = off). Keep it well below ``elastic_sigma`` to avoid folding.
    elastic_sigma: smoothness scale in voxels: the spacing of the coarse grid of random control
        displacements that is linearly interpolated to every voxel (along all spatial axes).
    intensity_gamma: range of the gamma exponent applied to the image rescaled to [0, 1] between
        its own minimum and maximum, then mapped back (None = off).
    noise_std: standard deviation of additive Gaussian noise in normalised intensity units (0 =
        off); the result is clipped to the image's own range.
    p: probability that a sample is augmented at all.
    intensity_net: probability that an augmented sample is re-rendered by a random shallow
        network (GIN; 0 = off). Drawn independently of ``p``'s choice, applied only to samples
        that ``p`` chose.
    intensity_net_layers: convolutions in that network (>= 1).
    intensity_net_width: channels between its convolutions.
    ipa: probability that a re-rendered sample blends two renderings through a smooth random
        map (IPA; needs ``intensity_net > 0``).
    ipa_grid: control points of that map along each in-plane side (its smoothness).
    location_scale: probability that an augmented sample gets a random location-scale
        re-mapping of its intensities (0 = off).
    location_scale_local: probability that the re-mapping is local (one curve per class label
        and one for the background) rather than global, where labels are given.
    location_scale_range: bounds on |a - 1| and |b| of ``a * v + b`` on the [0, 1] scale.
    """

    rotation_deg: float | Range = 15.0
    scale: Range = (0.9, 1.1)
    shear: float = 0.05
    translate: float = 0.05
    flip_axes: tuple[int, ...] = ()
    elastic_alpha: float = 0.0
    elastic_sigma: float = 16.0
    intensity_gamma: Range | None = (0.8, 1.2)
    noise_std: float = 0.0
    p: float = 0.8
    intensity_net: float = 0.0
    intensity_net_layers: int = 4
    intensity_net_width: int = 4
    ipa: float = 0.0
    ipa_grid: int = 4
    location_scale: float = 0.0
    location_scale_local: float = 0.5
    location_scale_range: float = 0.25

    def __post_init__(self) -> None:
        # YAML and the CLI give lists; normalise to tuples and a rotation range
        rot = self.rotation_deg
        self.rotation_deg = (-abs(rot), abs(rot)) if isinstance(rot, int | float) else tuple(rot)
        self.scale = tuple(self.scale)
        self.flip_axes = tuple(int(a) for a in self.flip_axes)
        if self.intensity_gamma is not None:
            self.intensity_gamma = tuple(self.intensity_gamma)
        self._validate()

    def _validate(self) -> None:
        problems = []
        for name in ("rotation_deg", "scale", "intensity_gamma"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or value[0] > value[1]):
                problems.append(f"{name} must be a range (low, high) with low <= high")
        if self.scale[0] <= 0 or (self.intensity_gamma or (1, 1))[0] <= 0:
            problems.append("scale and intensity_gamma must be positive")
        for name in ("shear", "translate", "elastic_alpha", "noise_std", "location_scale_range"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.elastic_sigma <= 0:
            problems.append("elastic_sigma must be > 0")
        for name in ("p", "intensity_net", "ipa", "location_scale", "location_scale_local"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1]")
        if self.intensity_net_layers < 1 or self.intensity_net_width < 1:
            problems.append("intensity_net_layers and intensity_net_width must be >= 1")
        if self.ipa > 0 and self.intensity_net == 0:
            problems.append("ipa blends GIN renderings: it needs intensity_net > 0")
        if self.ipa_grid < 2:
            problems.append("ipa_grid must be >= 2")
        if problems:
            raise UdasegError(
                f"bad augmentation settings: {'; '.join(problems)}",
                hint=f"fields: {', '.join(f.name for f in fields(self))}",
                exit_code=2,
            )


@dataclass
class _Draws:
    """Everything random for one batch of N, drawn up front in a fixed order (CPU tensors)."""

    apply: Tensor  # (N,) bool
    affine: Tensor  # (N, 6) uniform [0, 1): angle, scale, shear x, shear y, shift x, shift y
    flips: Tensor  # (N, len(flip_axes)) bool
    gamma: Tensor | None  # (N,) uniform [0, 1)
    elastic: Tensor | None  # (N, 2, *coarse) standard normal, (dx, dy) control displacements
    noise: Tensor | None  # images.shape standard normal
    net: _NetDraws | None  # the random intensity networks, one per sample
    tone: _ToneDraws | None  # the location-scale re-mappings, one per sample


@dataclass
class _NetDraws:
    """Random shallow networks for :func:`_intensity_net`, one per sample (CPU tensors)."""

    apply: Tensor  # (N,) bool, before intersecting with _Draws.apply
    weights: list[Tensor]  # per layer (N, c_out, c_in, 3, 3) standard normal
    biases: list[Tensor]  # per layer (N, c_out) standard normal
    kernel3: Tensor  # (N, layers) bool: 3x3 (True, probability 1/4) or 1x1 (centre tap only)
    mix: Tensor  # (N,) uniform [0, 1): weight of the re-rendered image in the blend
    second: _NetDraws | None = None  # IPA: the second network of each sample
    ipa: Tensor | None = None  # (N,) bool: blend the two renderings (IPA)
    ipa_map: Tensor | None = None  # (N, 1, g, g) uniform [0, 1): the blend's control points


@dataclass
class _ToneDraws:
    """Random location-scale re-mappings for :func:`_location_scale` (CPU tensors)."""

    apply: Tensor  # (N,) bool, before intersecting with _Draws.apply
    local: Tensor  # (N,) bool: one curve per class region (else curve 0 for the whole image)
    knots: Tensor  # (N, TONE_REGIONS, TONE_KNOTS) the curves' values at the knots, in [0, 1]
    scale: Tensor  # (N, TONE_REGIONS) a
    shift: Tensor  # (N, TONE_REGIONS) b


def _draw(shape: torch.Size, cfg: AugmentConfig, gen: torch.Generator) -> _Draws:
    n, spatial = shape[0], shape[2:]
    u = torch.rand(n, 7, generator=gen, dtype=torch.float64)
    flips = torch.rand(n, len(cfg.flip_axes), generator=gen) < 0.5
    gamma = torch.rand(n, generator=gen) if cfg.intensity_gamma is not None else None
    elastic = None
    if cfg.elastic_alpha > 0:
        coarse = [max(2, math.ceil(s / cfg.elastic_sigma) + 1) for s in spatial]
        elastic = torch.randn(n, 2, *coarse, generator=gen)
    noise = torch.randn(shape, generator=gen) if cfg.noise_std > 0 else None
    net = _draw_nets(n, shape[1], cfg, gen) if cfg.intensity_net > 0 else None
    tone = _draw_tones(n, cfg, gen) if cfg.location_scale > 0 else None
    return _Draws(u[:, 0] < cfg.p, u[:, 1:], flips, gamma, elastic, noise, net, tone)


def _draw_nets(n: int, channels: int, cfg: AugmentConfig, gen: torch.Generator) -> _NetDraws:
    layers, width = cfg.intensity_net_layers, cfg.intensity_net_width
    sizes = [channels] + [width] * (layers - 1) + [channels]
    weights = [torch.randn(n, c_out, c_in, 3, 3, generator=gen) for c_in, c_out in pairwise(sizes)]
    biases = [torch.randn(n, c_out, generator=gen) for c_out in sizes[1:]]
    u = torch.rand(n, layers + 2, generator=gen)
    net = _NetDraws(u[:, 0] < cfg.intensity_net, weights, biases, u[:, 1:-1] < 0.25, u[:, -1])
    if cfg.ipa > 0:
        net.second = _draw_nets(n, channels, replace(cfg, ipa=0.0), gen)
        net.ipa = torch.rand(n, generator=gen) < cfg.ipa
        net.ipa_map = torch.rand(n, 1, cfg.ipa_grid, cfg.ipa_grid, generator=gen)
    return net


def _draw_tones(n: int, cfg: AugmentConfig, gen: torch.Generator) -> _ToneDraws:
    u = torch.rand(n, 3, generator=gen)
    knots = torch.rand(n, TONE_REGIONS, TONE_KNOTS, generator=gen)
    shape = torch.rand(n, TONE_REGIONS, 2, generator=gen)  # monotone?, falling?
    scale_shift = torch.rand(n, TONE_REGIONS, 2, generator=gen) * 2 - 1
    # half of the curves keep the tones' order (rising or falling), the others fold it
    monotone = knots.sort(dim=-1).values
    monotone = torch.where(shape[..., 1:] < 0.5, monotone, monotone.flip(-1))
    knots = torch.where(shape[..., :1] < 0.5, monotone, knots)
    bound = cfg.location_scale_range
    return _ToneDraws(
        u[:, 0] < cfg.location_scale,
        u[:, 1] < cfg.location_scale_local,
        knots,
        1 + bound * scale_shift[..., 0],
        bound * scale_shift[..., 1],
    )


def _lerp(unit: Tensor, bounds: Range) -> Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * unit


def affine_theta(u: Tensor, cfg: AugmentConfig, height: int, width: int) -> Tensor:
    """(n, 2, 3) ``affine_grid`` matrices (output -> input, normalised coords) from (n, 6) uniforms.

    The content moves by p_out = M p_in + t in pixel units about the centre (x right, y down),
    M = rotation @ shear @ zoom; the grid needs the inverse, expressed in the normalised
    coordinates of ``align_corners=False`` (pixel = normalised * side / 2).
    """
    angle = torch.deg2rad(_lerp(u[:, 0], cfg.rotation_deg))
    zoom = _lerp(u[:, 1], cfg.scale)
    kx, ky = _lerp(u[:, 2], (-cfg.shear, cfg.shear)), _lerp(u[:, 3], (-cfg.shear, cfg.shear))
    tx = _lerp(u[:, 4], (-cfg.translate, cfg.translate)) * width
    ty = _lerp(u[:, 5], (-cfg.translate, cfg.translate)) * height
    cos, sin = torch.cos(angle), torch.sin(angle)
    # with y pointing down, [[cos, sin], [-sin, cos]] turns the content counter-clockwise on screen
    rotation = torch.stack([cos, sin, -sin, cos], dim=1).view(-1, 2, 2)
    shear = torch.stack([torch.ones_like(kx), kx, ky, torch.ones_like(ky)], dim=1).view(-1, 2, 2)
    forward = rotation @ shear * zoom.view(-1, 1, 1)
    inverse = _inverse_2x2(forward)
    half = torch.tensor([width / 2.0, height / 2.0], dtype=u.dtype)
    matrix = inverse * half.view(1, 1, 2) / half.view(1, 2, 1)  # S^-1 M^-1 S, S = diag(half)
    offset = -(inverse @ torch.stack([tx, ty], dim=1).unsqueeze(-1)).squeeze(-1) / half
    return torch.cat([matrix, offset.unsqueeze(-1)], dim=2)


def _inverse_2x2(m: Tensor) -> Tensor:
    """(n, 2, 2) inverses in closed form (a general solver costs more than the whole warp)."""
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    adjugate = torch.stack([d, -b, -c, a], dim=1).view(-1, 2, 2)
    return adjugate / (a * d - b * c).view(-1, 1, 1)


def affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """(n, H, W, 2) sampling grid of (n, 2, 3) matrices; ``F.affine_grid(.., align_corners=False)``.

    Built by broadcasting the separable pixel-centre coordinates, which is several times faster
    on the CPU than the generic batched matrix product.
    """
    xs = (torch.arange(width, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta.view(-1, 6, 1, 1)
    grid_x = t[:, 0] * xs + t[:, 1] * ys.view(-1, 1) + t[:, 2]
    grid_y = t[:, 3] * xs + t[:, 4] * ys.view(-1, 1) + t[:, 5]
    return torch.stack([grid_x, grid_y], dim=-1)


def _elastic_grid_offset(coarse: Tensor, cfg: AugmentConfig, spatial: torch.Size) -> Tensor:
    """(n, *spatial, 2) displacement in normalised (x, y) units from (n, 2, *coarse) normals."""
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    field = F.interpolate(
        coarse * cfg.elastic_alpha, size=tuple(spatial), mode=mode, align_corners=True
    )
    height, width = spatial[-2], spatial[-1]
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=field.dtype)  # voxels -> normalised
    return field.movedim(1, -1) * scale


def _sampling_grid(draws: _Draws, sel: Tensor, cfg: AugmentConfig, spatial: torch.Size) -> Tensor:
    """Float32 CPU grid of the selected samples: (n, H, W, 2), one per sample and the same for
    every slice of a volume, or (n, D, H, W, 2) for 3D with an elastic field (varying along D)."""
    height, width = spatial[-2], spatial[-1]
    grid = affine_grid(affine_theta(draws.affine[sel], cfg, height, width).float(), height, width)
    if draws.elastic is None:
        return grid
    if len(spatial) == 3:
        grid = grid.unsqueeze(1)
    return grid + _elastic_grid_offset(draws.elastic[sel], cfg, spatial)


def _sample_planes(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    """grid_sample x (n, C, H, W) or (n, C, D, H, W) in its (H, W) planes, zeros outside.

    A per-sample grid (n, H, W, 2) serves all slices at once by folding D into the channels; a
    per-slice grid (n, D, H, W, 2) needs the slices as a batch of n * D images.
    """
    shape = x.shape
    if x.ndim == 4 or grid.ndim == 4:
        flat = x.reshape(shape[0], -1, *shape[-2:])
        out = F.grid_sample(flat, grid, mode=mode, padding_mode="zeros", align_corners=False)
        return out.view(shape)
    slices = x.movedim(2, 1).reshape(-1, shape[1], *shape[-2:])
    out = F.grid_sample(
        slices,
        grid.reshape(-1, *grid.shape[-3:]),
        mode=mode,
        padding_mode="zeros",
        align_corners=False,
    )
    return out.view(shape[0], shape[2], shape[1], *shape[-2:]).movedim(1, 2)


def _warp_images(images: Tensor, grid: Tensor) -> Tensor:
    # padding the shifted image with 0 pads the original with its minimum, and bilinear blends
    # at the border go towards the background rather than towards 0
    low = images.amin(dim=tuple(range(2, images.ndim)), keepdim=True)
    return _sample_planes(images - low, grid, "bilinear") + low


def _warp_labels(labels: Tensor, grid: Tensor) -> Tensor:
    # nearest returns input values exactly, so the float round trip keeps the class ids
    warped = _sample_planes(labels.unsqueeze(1).float(), grid.float(), "nearest")
    return warped.squeeze(1).to(labels.dtype)


def _flip(x: Tensor, flips: Tensor, axes: tuple[int, ...], spatial_start: int) -> Tensor:
    """Flip sample i of x along axes[j] where flips[i, j] (an (n, len(axes)) bool) is True."""
    n_spatial = x.ndim - spatial_start
    for j, axis in enumerate(axes):
        dim = spatial_start + axis % n_spatial
        mask = flips[:, j].view(-1, *[1] * (x.ndim - 1)).to(x.device)
        x = torch.where(mask, x.flip(dim), x)
    return x


def _intensity(images: Tensor, draws: _Draws, sel: Tensor, cfg: AugmentConfig) -> Tensor:
    """Gamma then noise, per sample and channel within the image's own [min, max]."""
    dims = tuple(range(2, images.ndim))
    low, high = images.amin(dim=dims, keepdim=True), images.amax(dim=dims, keepdim=True)
    span = high - low
    if draws.gamma is not None:
        gamma = _lerp(draws.gamma[sel], cfg.intensity_gamma).to(images)
        unit = ((images - low) / span.clamp_min(1e-6)).clamp(0.0, 1.0)
        images = low + span * unit.pow(gamma.view(-1, *[1] * (images.ndim - 1)))
    if draws.noise is not None:
        noise = draws.noise[sel].to(images)
        images = torch.minimum(torch.maximum(images + cfg.noise_std * noise, low), high)
    return images


def _render(images: Tensor, net: _NetDraws, sel: Tensor) -> Tensor:
    """The selected samples (rows of ``sel`` into the batch) through their own random network;
    3D volumes go slice by slice, so every slice of a volume shares one network."""
    n, channels = images.shape[:2]
    # samples become groups of one grouped convolution, so each gets its own weights in one call
    x = images.movedim(1, -3) if images.ndim == 5 else images  # (n, [D,] C, H, W)
    lead = x.shape[:-3]
    h = x.reshape(-1, channels, *x.shape[-2:])
    per_sample = h.shape[0] // n  # slices per sample
    h = (
        h.reshape(n, per_sample, channels, *h.shape[-2:])
        .transpose(0, 1)
        .reshape(per_sample, -1, *h.shape[-2:])
    )
    centre_only = torch.zeros(3, 3)
    centre_only[1, 1] = 1.0
    for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        w, b = w[sel], b[sel]
        k3 = net.kernel3[sel, i].view(-1, 1, 1, 1, 1)
        w = torch.where(k3, w, w * centre_only)
        fan_in = w.shape[2] * torch.where(k3.view(-1), 9.0, 1.0)
        # Kaiming-like scale keeps the activations' magnitude from exploding over the layers
        w = w / fan_in.sqrt().view(-1, 1, 1, 1, 1)
        h = F.conv2d(h, w.flatten(0, 1).to(h), b.flatten().to(h), padding=1, groups=n)
        if i < len(net.weights) - 1:
            h = F.leaky_relu(h, 0.2)
    h = (
        h.reshape(per_sample, n, channels, *h.shape[-2:])
        .transpose(0, 1)
        .reshape(*lead, channels, *h.shape[-2:])
    )
    return h.movedim(-3, 1) if images.ndim == 5 else h


def _standard(t: Tensor) -> Tensor:
    """Zero mean, unit spread per sample and channel: outliers such as bone or a table line
    would squash a min-max scaling."""
    dims = tuple(range(2, t.ndim))
    return (t - t.mean(dim=dims, keepdim=True)) / t.std(dim=dims, keepdim=True).clamp_min(1e-6)


def _ipa_blend(first: Tensor, second: Tensor, net: _NetDraws, sel: Tensor) -> Tensor:
    """Where ``net.ipa`` chose a sample, its two (standardised) renderings blended by a smooth
    random map in [0, 1] (bilinear between the control points, the same for every slice of a
    volume); the first rendering elsewhere."""
    size = first.shape[-2:]
    blend = F.interpolate(net.ipa_map[sel], size=size, mode="bilinear", align_corners=True)
    blend = blend.to(first)
    if first.ndim == 5:
        blend = blend.unsqueeze(2)
    chosen = net.ipa[sel].to(first.device).view(-1, *[1] * (first.ndim - 1))
    mixed = _standard(blend * first + (1 - blend) * second)
    return torch.where(chosen, mixed, first)


def _intensity_net(images: Tensor, net: _NetDraws, sel: Tensor) -> Tensor:
    """Re-render the selected samples (rows of ``sel`` into the batch): GIN, or IPA's blend of
    two renderings where the draws chose it."""
    dims = tuple(range(2, images.ndim))
    low, high = images.amin(dim=dims, keepdim=True), images.amax(dim=dims, keepdim=True)
    rendered = _standard(_render(images, net, sel))
    if net.second is not None:
        second = _standard(_render(images, net.second, sel))
        rendered = _ipa_blend(rendered, second, net, sel)
    # blend with the original, then give the result the original's mean and spread, inside its
    # own range
    mix = net.mix[sel].to(images).view(-1, *[1] * (images.ndim - 1))
    blended = _standard(mix * rendered + (1 - mix) * _standard(images))
    mean, std = images.mean(dim=dims, keepdim=True), images.std(dim=dims, keepdim=True)
    return torch.minimum(torch.maximum(mean + std * blended, low), high)


def _location_scale(images: Tensor, labels: Tensor | None, tone: _ToneDraws, sel: Tensor) -> Tensor:
    """Re-map the selected samples' intensities by their random tone curve and ``a * v + b``
    (see the module docstring), per class region where ``tone.local`` and labels are given.

    images: (n, C, *spatial) the selected samples; labels: (n, *spatial) their class ids or None.
    """
    dims = tuple(range(2, images.ndim))
    low, high = images.amin(dim=dims, keepdim=True), images.amax(dim=dims, keepdim=True)
    span = (high - low).clamp_min(1e-6)
    unit = ((images - low) / span).clamp(0.0, 1.0)
    n = images.shape[0]
    region = torch.zeros(images.shape[:1] + images.shape[2:], dtype=torch.long)
    if labels is not None:
        local = tone.local[sel].view(-1, *[1] * (labels.ndim - 1))
        # ignored voxels (negative ids) count as background: their tones are still an image's
        region = torch.where(local, labels.cpu().long().clamp_min(0) % TONE_REGIONS, region)
    region = region.to(images.device).unsqueeze(1).expand_as(images)
    rows = torch.arange(n, device=images.device).view(-1, *[1] * (images.ndim - 1))
    position = unit * (TONE_KNOTS - 1)
    left = position.floor().clamp(max=TONE_KNOTS - 2).long()
    frac = position - left
    knots = tone.knots[sel].to(images)
    curve = knots[rows, region, left] * (1 - frac) + knots[rows, region, left + 1] * frac
    scale = tone.scale[sel].to(images)[rows, region]
    shift = tone.shift[sel].to(images)[rows, region]
    remapped = (scale * (curve - 0.5) + 0.5 + shift).clamp(0.0, 1.0)
    return low + span * remapped


def rerender(
    images: Tensor,
    probability: float,
    generator: torch.Generator,
    *,
    layers: int = 4,
    width: int = 4,
    ipa: float = 0.0,
    location_scale: float = 0.0,
    labels: Tensor | None = None,
) -> Tensor:
    """Only the intensity re-mappings of :func:`augment` (steps 4 and 5), no geometry: each sample
    of ``images`` ((N, C, H, W) or (N, C, D, H, W) float) gets, with ``location_scale``, a random
    location-scale re-mapping (per class of ``labels``, (N, *spatial) class ids, where given),
    then with ``probability`` a rendering by its own random shallow network (``ipa``: the
    probability of IPA's blend of two renderings instead); the others come back unchanged. Draws
    the same amount from ``generator`` whatever the outcome.
    """
    if probability == 0 and location_scale == 0:
        return images
    cfg = AugmentConfig(
        intensity_net=probability,
        intensity_net_layers=layers,
        intensity_net_width=width,
        ipa=ipa,
        location_scale=location_scale,
    )
    n = images.shape[0]
    net = _draw_nets(n, images.shape[1], cfg, generator) if probability > 0 else None
    tone = _draw_tones(n, cfg, generator) if location_scale > 0 else None
    return _remap(images, labels, tone, net, torch.arange(n))


def check_ipa(ipa: float, intensity_net: float) -> None:
    """Refuse ``--ipa`` without ``--intensity-net``: IPA blends renderings that only exist when
    the random networks re-render (exit code 2, naming both options)."""
    if ipa > 0 and intensity_net == 0:
        raise UdasegError(
            f"--ipa {ipa} blends random renderings, which --intensity-net 0 turns off",
            hint="add --intensity-net 1.0 (or drop --ipa)",
            exit_code=2,
        )


def _remap(
    images: Tensor, labels: Tensor | None, tone: _ToneDraws | None, net: _NetDraws | None, sel
) -> Tensor:
    """The location-scale re-mapping, then the rendering, each on the samples its draws chose.

    images: the samples ``sel`` (indices into the drawn batch) of a batch; labels: theirs or None.
    """
    if tone is not None:
        rows = tone.apply[sel].nonzero().squeeze(1)  # rows of images (and sel) to re-map
        if len(rows):
            chosen = None if labels is None else _take(labels, rows)
            remapped = _location_scale(_take(images, rows), chosen, tone, sel[rows])
            images = _put(images, rows, remapped)
    if net is not None:
        rows = net.apply[sel].nonzero().squeeze(1)
        if len(rows):
            images = _put(images, rows, _intensity_net(_take(images, rows), net, sel[rows]))
    return images


def _check(images: Tensor, labels: Tensor | None, cfg: AugmentConfig) -> None:
    if images.ndim not in (4, 5) or not images.is_floating_point():
        raise ValueError(
            f"images must be float (N, C, H, W) or (N, C, D, H, W), got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    if labels is not None and labels.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match images "
            f"{tuple(images.shape)}: expected (N, *spatial)"
        )
    n_spatial = images.ndim - 2
    bad = [a for a in cfg.flip_axes if not -n_spatial <= a < n_spatial]
    if bad:
        raise UdasegError(
            f"flip_axes {bad} do not exist in {n_spatial}D images",
            hint=f"use spatial axes 0..{n_spatial - 1}",
            exit_code=2,
        )


def _take(x: Tensor, sel: Tensor) -> Tensor:
    return x if len(sel) == len(x) else x[sel.to(x.device)]


def _put(x: Tensor, sel: Tensor, values: Tensor) -> Tensor:
    """x with the samples sel replaced by values (a new tensor; values itself when sel is all)."""
    if len(sel) == len(x):
        return values
    out = x.clone()
    out[sel.to(x.device)] = values
    return out


def augment(
    images: Tensor, labels: Tensor | None, config: AugmentConfig | None, generator: torch.Generator
) -> tuple[Tensor, Tensor | None]:
    """Augment a batch; returns new (images, labels) of the same shapes and dtypes.

    images: (N, C, H, W) or (N, C, D, H, W) float; labels: (N, H, W) or (N, D, H, W) integer class
    ids, or None. generator: a CPU ``torch.Generator``, the only source of randomness. Samples not
    chosen (probability 1 - p) come back bit-identical. See the module docstring for conventions.
    """
    if config is None or config.p == 0:
        return images, labels
    _check(images, labels, config)
    draws = _draw(images.shape, config, generator)
    sel = draws.apply.nonzero().squeeze(1)
    if len(sel) == 0:
        return images, labels
    grid = _sampling_grid(draws, sel, config, images.shape[2:])
    out = _warp_images(_take(images, sel), grid.to(images.device, images.dtype))
    out = _flip(out, draws.flips[sel], config.flip_axes, 2)
    out = _intensity(out, draws, sel, config)
    warped = None if labels is None else _warp_labels(_take(labels, sel), grid.to(labels.device))
    if warped is not None:
        warped = _flip(warped, draws.flips[sel], config.flip_axes, 1)
    out = _remap(out, warped, draws.tone, draws.net, sel)
    new_images = _put(images, sel, out)
    if labels is None:
        return new_images, None
    return new_images, _put(labels, sel, warped)
