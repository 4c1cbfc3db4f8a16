"""Supervised segmentation losses, built by name, for the models' forward contract.

Every loss is called as ``loss(outputs, target) -> (total, parts)``:

* ``outputs``: the model's dict (see :mod:`udaseg.models.registry`); ``outputs["logits"]`` is the
  main head, (N, C, H, W) or (N, C, D, H, W), and every tensor in ``outputs["aux"]`` is a
  deep-supervision head of the same shape. ``total = L(main) + aux_weight * sum_k L(aux_k)``.
* ``target``: (N, H, W) or (N, D, H, W) integer class ids in 0..C-1 (C = ``num_classes``, background
  0 included); voxels equal to ``ignore_index`` (default -100) are "not labelled" and take no part
  in any term.
* ``total``: a float32 scalar tensor to back-propagate; ``parts``: python floats for logging: the
  main head's unweighted terms (e.g. ``"ce"``, ``"dice"``), ``"main"`` (the main head's weighted
  sum), ``"aux"`` (``aux_weight`` times the sum over auxiliary heads) and ``"total"``.

Losses are computed in float32 with autocast disabled, whatever the logits' dtype (bf16 logits
from an autocast forward are upcast), so reductions over 10^6 voxels do not lose precision.

Names (``create_loss``):

``"ce"``
    Cross-entropy, optionally class weighted.
``"ce_dice"`` (SIFA, Chen et al. TMI 2020, Eq. 3: L_seg = H + Dice)
    The paper writes an unweighted H. The authors' public release weights each class's
    cross-entropy by ``1 - f_c``, f_c the fraction of the batch's voxels labelled c, recomputed
    every batch; that is the default here (``class_weights="complement"``), with
    ``"inverse_frequency"`` (w_c proportional to 1/f_c), fixed weights, or ``"uniform"`` as options.
    Their Dice divides by sum p^2 + sum g (V-Net form), used here too; their release also averages
    the Dice over all classes with background, here background is left out by default
    (``include_background=True`` restores it). Paper default ``aux_weight`` 0.1 (lambda_seg^2 for
    the classifier C2 against 1.0 for C1).
``"dice_focal"`` (DAR-UNet, Yao et al.: L_seg = L_Dice + lambda L_Focal, lambda = 10)
    V-Net soft Dice [Milletari et al., their ref. 33] + 10 x focal loss [Lin et al.] with gamma 2,
    applied alike to the primary and every auxiliary head ("all the prediction branches are
    optimized with the segmentation loss"), so the default ``aux_weight`` is 1.0.
``"gdice_ce"`` (BiGL, He et al., Eq. 4: CE + generalized Dice)
    Generalized Dice [Sudre et al. 2017] + cross-entropy. Sudre et al. weight class c by
    ``1 / (sum_n g_cn)^2``; BiGL writes the class-balance weight as ``w^i = 1 / num(x^i)``, i.e.
    power 1, which is the default here (``weight_power=1``; 2 gives Sudre's). Counts are taken
    over the batch. Background is included by default, as both papers sum over all c classes.

Formulas (sums over the batch and all spatial positions of labelled voxels; p the softmax
probability, g the one-hot target, C' the classes the Dice counts):

* CE: ``sum_n w_{y_n} (-log p_{y_n,n}) / sum_n w_{y_n}`` -- a weighted *mean*, so its size does
  not depend on the weights' scale (uniform logits give log C for any weights). With
  inverse-frequency weights this is the mean over present classes of each class's mean CE.
* Focal: the same with ``-(1 - p_y)^gamma log p_y`` per voxel (gamma = 0 gives CE exactly).
* Soft Dice: ``1 - mean_{c in C'} (2 sum p_c g_c + s) / (sum p_c^2 + sum g_c + s)`` (plain
  ``sum p_c`` in the denominator with ``squared_pred=False``); ``s = smooth`` = 1 voxel by
  default, so a class absent from both target and prediction scores 1 (no 0/0) and a class absent
  from the target but predicted is pushed down.
* Generalized Dice: ``1 - (2 sum_c w_c sum p_c g_c + s) / (sum_c w_c sum (p_c + g_c) + s)`` with
  ``w_c = 1 / (sum g_c)^power`` normalised to sum 1 over C' (the ratio does not depend on the
  scale; normalising keeps ``s`` meaningful); a class absent from the batch would get weight
  infinity and takes the largest present class weight instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from udaseg.errors import UdasegError, look_up_option

#: per-batch class weighting modes accepted by ``class_weights`` (besides a sequence of C floats)
WEIGHT_MODES = ("uniform", "complement", "inverse_frequency")

ClassWeights = str | Sequence[float] | Tensor | None


# --- per-head inputs ------------------------------------------------------------------------------


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    """All dims of (N, C, *spatial) but the class dim: the batch and spatial sums."""
    return (0, *range(2, x.ndim))


@dataclass
class TargetInputs:
    """The target's part of every term's inputs, built once per call and shared by all heads.

    onehot: (N, C, *spatial) float32, zero at unlabelled voxels; valid: (N, *spatial) bool, True
    where labelled; labels: (N, *spatial) int64 with unlabelled voxels set to 0 (so they can
    index), always read together with ``valid``; counts: (C,) labelled voxels per class;
    all_valid: every voxel is labelled.
    """

    onehot: Tensor
    valid: Tensor
    labels: Tensor
    counts: Tensor
    all_valid: bool

    def labelled(self, per_voxel: Tensor) -> Tensor:
        """per_voxel, (N, *spatial) or (N, C, *spatial), zero where unlabelled. Where every voxel
        is labelled it is returned as it is: the mask would multiply by exactly 1, and at 3D
        patch sizes each full-size product costs about as much as a network head."""
        if self.all_valid:
            return per_voxel
        mask = self.valid if per_voxel.ndim == self.valid.ndim else self.valid.unsqueeze(1)
        return per_voxel * mask


@dataclass
class HeadInputs(TargetInputs):
    """What every term needs from one head: the target's parts and the head's logp/prob,
    (N, C, *spatial) float32 log-softmax and softmax, computed once."""

    logp: Tensor
    prob: Tensor

    @property
    def num_classes(self) -> int:
        return self.logp.shape[1]


def target_inputs(target: Tensor, num_classes: int, ignore_index: int) -> TargetInputs:
    """One-hot (N, C, *s), labelled mask, index-safe labels and per-class counts of a (N, *s)
    target."""
    target = target.long()
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        found = sorted(set(target[bad].unique().tolist()))[:5]
        raise ValueError(
            f"target holds class ids {found} outside 0..{num_classes - 1} "
            f"(ignore_index={ignore_index})"
        )
    all_valid = bool(valid.all())
    labels = target if all_valid else torch.where(valid, target, torch.zeros_like(target))
    # written straight into (N, C, *s) float32: the layout of the logits it multiplies
    onehot = torch.zeros(
        (labels.shape[0], num_classes, *labels.shape[1:]), dtype=torch.float32, device=labels.device
    ).scatter_(1, labels.unsqueeze(1), 1.0)
    if not all_valid:
        onehot = onehot * valid.unsqueeze(1)
    counts = onehot.sum(dim=_reduce_dims(onehot))
    return TargetInputs(onehot, valid, labels, counts, all_valid)


def head_inputs(logits: Tensor, t: TargetInputs) -> HeadInputs:
    """Float32 softmax of one head's (N, C, *s) logits, with the target's parts."""
    logp = F.log_softmax(logits.float(), dim=1)
    return HeadInputs(**vars(t), logp=logp, prob=logp.exp())


# --- class weights -----------------------------------------------------------------------------


def batch_class_weights(spec: ClassWeights, counts: Tensor) -> Tensor:
    """(C,) float32 per-class weights for the cross-entropy / focal terms.

    spec: None or ``"uniform"`` (all 1), ``"complement"`` (1 - f_c, f_c = counts_c / sum counts,
    SIFA's release), ``"inverse_frequency"`` (sum(counts) / (K counts_c) over the K present
    classes, 0 for absent ones, whose voxels do not occur anyway), or C fixed weights.
    counts: (C,) labelled voxels per class in this batch.
    """
    if spec is None or (isinstance(spec, str) and spec == "uniform"):
        return torch.ones_like(counts)
    if isinstance(spec, str):
        look_up_option(spec, WEIGHT_MODES, what="class weighting")
        total = counts.sum().clamp_min(1.0)
        if spec == "complement":
            weights = 1.0 - counts / total
            # one class only (an all-background patch): every weight would be 0 and the term
            # would vanish; fall back to uniform so the batch still teaches something
            return weights if int((counts > 0).sum()) > 1 else torch.ones_like(counts)
        present = counts > 0
        k = present.sum().clamp_min(1)
        return torch.where(present, total / (k * counts.clamp_min(1.0)), torch.zeros_like(counts))
    weights = torch.as_tensor(spec, dtype=torch.float32, device=counts.device)
    if weights.shape != counts.shape:
        raise UdasegError(
            f"class_weights has {weights.numel()} values for {counts.numel()} classes",
            hint="give one weight per class, background first",
            exit_code=2,
        )
    return weights


def generalized_dice_weights(counts: Tensor, power: float = 1.0) -> Tensor:
    """(C,) generalized Dice class weights from (C,) per-class voxel counts, summing to 1.

    ``w_c = 1 / counts_c^power`` (power 2: Sudre et al.; 1: BiGL's ``1 / num(x^i)``), classes with
    no voxel take the largest present weight (their raw weight is infinite), then normalised to
    sum 1. All zeros when no class has voxels.
    """
    present = counts > 0
    raw = torch.where(present, counts.clamp_min(1e-12).pow(-power), torch.zeros_like(counts))
    if not bool(present.any()):
        return raw
    raw = torch.where(present, raw, raw.max())
    return raw / raw.sum()


# --- terms ---------------------------------------------------------------------------------------


def _weighted_mean(per_voxel: Tensor, h: HeadInputs, class_weights: ClassWeights) -> Tensor:
    """sum_n w_{y_n} l_n / sum_n w_{y_n} over labelled voxels; 0 (with a graph) when none."""
    weights = batch_class_weights(class_weights, h.counts).to(per_voxel.device)
    w = h.labelled(weights[h.labels])
    return (w * per_voxel).sum() / w.sum().clamp_min(1e-12)


def cross_entropy_term(h: HeadInputs, class_weights: ClassWeights = None) -> Tensor:
    """Class-weighted mean cross-entropy over labelled voxels."""
    nll = -h.logp.gather(1, h.labels.unsqueeze(1)).squeeze(1)
    return _weighted_mean(nll, h, class_weights)


def focal_term(h: HeadInputs, gamma: float = 2.0, class_weights: ClassWeights = None) -> Tensor:
    """Focal loss ``-(1 - p_y)^gamma log p_y``, weighted mean like the cross-entropy."""
    logp_y = h.logp.gather(1, h.labels.unsqueeze(1)).squeeze(1)
    # clamp: exp(logp) can round a hair above 1, and a negative base breaks non-integer gamma
    modulator = (1.0 - logp_y.exp()).clamp_min(0.0).pow(gamma)
    return _weighted_mean(-modulator * logp_y, h, class_weights)


def _dice_classes(num_classes: int, include_background: bool) -> slice:
    return slice(0 if include_background else 1, num_classes)


def soft_dice_term(
    h: HeadInputs, include_background: bool = False, smooth: float = 1.0, squared_pred: bool = True
) -> Tensor:
    """1 - mean over classes of the batch soft Dice (see the module docstring)."""
    keep = _dice_classes(h.num_classes, include_background)
    dims = _reduce_dims(h.prob)
    prob = h.labelled(h.prob)
    intersection = (prob * h.onehot).sum(dims)[keep]
    pred = (prob.square() if squared_pred else prob).sum(dims)[keep]
    truth = h.counts[keep]
    dice = (2.0 * intersection + smooth) / (pred + truth + smooth)
    if dice.numel() == 0:  # a single-class problem without background: nothing to score
        return prob.sum() * 0.0
    return 1.0 - dice.mean()


def generalized_dice_term(
    h: HeadInputs, weight_power: float = 1.0, include_background: bool = True, smooth: float = 1.0
) -> Tensor:
    """Generalized Dice loss, per-batch weights ``1 / count^weight_power`` (module docstring)."""
    keep = _dice_classes(h.num_classes, include_background)
    dims = _reduce_dims(h.prob)
    prob = h.labelled(h.prob)
    counts = h.counts[keep]
    weights = generalized_dice_weights(counts, weight_power)
    intersection = (weights * (prob * h.onehot).sum(dims)[keep]).sum()
    union = (weights * (prob.sum(dims)[keep] + counts)).sum()
    return 1.0 - (2.0 * intersection + smooth) / (union + smooth)


Term = Callable[[HeadInputs], Tensor]


# --- the loss ------------------------------------------------------------------------------------


class SegmentationLoss:
    """A weighted sum of named terms, applied to the main head and (weighted) every aux head.

    terms: ``{name: (weight, fn)}`` with ``fn(HeadInputs) -> scalar``; the head loss is
    ``sum weight * fn``. See the module docstring for the call convention.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        terms: dict[str, tuple[float, Term]],
        *,
        aux_weight: float,
        ignore_index: int = -100,
    ) -> None:
        self.name = name
        self.num_classes = num_classes
        self.terms = terms
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)

    def __repr__(self) -> str:
        weights = ", ".join(f"{w:g}*{n}" for n, (w, _) in self.terms.items())
        return f"SegmentationLoss({self.name!r}: {weights}, aux_weight={self.aux_weight:g})"

    def head_loss(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one head and its unweighted terms (no aux weighting, no autocast handling)."""
        self._check(logits, target)
        return self._head(logits, target_inputs(target, self.num_classes, self.ignore_index))

    def _head(self, logits: Tensor, t: TargetInputs) -> tuple[Tensor, dict[str, Tensor]]:
        h = head_inputs(logits, t)
        parts = {name: fn(h) for name, (_, fn) in self.terms.items()}
        loss = sum(w * parts[name] for name, (w, _) in self.terms.items())
        return loss, parts

    def __call__(self, outputs: dict, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        # autocast off: the float32 upcast in head_inputs must not be undone by an outer autocast
        heads = [outputs["logits"], *(outputs.get("aux") or [])]
        for logits in heads:
            self._check(logits, target)
        with torch.autocast(device_type=heads[0].device.type, enabled=False):
            t = target_inputs(target, self.num_classes, self.ignore_index)
            main, parts = self._head(heads[0], t)
            aux_heads = [self._head(logits, t)[0] for logits in heads[1:]]
            aux = self.aux_weight * sum(aux_heads) if aux_heads else main.new_zeros(())
            total = main + aux
        logged = {**parts, "main": main, "aux": aux, "total": total}
        # one device sync for all the logged numbers
        values = torch.stack([v.detach().float() for v in logged.values()]).tolist()
        return total, dict(zip(logged, values, strict=True))

    def _check(self, logits: Tensor, target: Tensor) -> None:
        if logits.ndim not in (4, 5) or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be (N, {self.num_classes}, *spatial) with 2 or 3 "
                f"spatial dims, got {tuple(logits.shape)}"
            )
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"target {tuple(target.shape)} does not match logits "
                f"{tuple(logits.shape)}: expected (N, *spatial)"
            )


# --- registry ------------------------------------------------------------------------------------


def _ce(num_classes: int, *, class_weights: ClassWeights = None) -> dict[str, tuple[float, Term]]:
    return {"ce": (1.0, lambda h: cross_entropy_term(h, class_weights))}


def _ce_dice(
    num_classes: int,
    *,
    class_weights: ClassWeights = None,
    include_background: bool = False,
    smooth: float = 1.0,
    squared_pred: bool = True,
    dice_weight: float = 1.0,
) -> dict[str, tuple[float, Term]]:
    weights = "complement" if class_weights is None else class_weights
    return {
        "ce": (1.0, lambda h: cross_entropy_term(h, weights)),
        "dice": (
            dice_weight,
            lambda h: soft_dice_term(h, include_background, smooth, squared_pred),
        ),
    }


def _dice_focal(
    num_classes: int,
    *,
    class_weights: ClassWeights = None,
    gamma: float = 2.0,
    focal_weight: float = 10.0,
    include_background: bool = False,
    smooth: float = 1.0,
    squared_pred: bool = True,
) -> dict[str, tuple[float, Term]]:
    return {
        "dice": (1.0, lambda h: soft_dice_term(h, include_background, smooth, squared_pred)),
        "focal": (focal_weight, lambda h: focal_term(h, gamma, class_weights)),
    }


def _gdice_ce(
    num_classes: int,
    *,
    class_weights: ClassWeights = None,
    weight_power: float = 1.0,
    include_background: bool = True,
    smooth: float = 1.0,
    ce_weight: float = 1.0,
) -> dict[str, tuple[float, Term]]:
    return {
        "gdice": (
            1.0,
            lambda h: generalized_dice_term(h, weight_power, include_background, smooth),
        ),
        "ce": (ce_weight, lambda h: cross_entropy_term(h, class_weights)),
    }


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its term builder, the paper's aux-head weight, a one-line summary."""

    builder: Callable[..., dict[str, tuple[float, Term]]]
    aux_weight: float
    description: str


LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(_ce, 1.0, "cross-entropy (optionally class weighted)"),
    "ce_dice": LossSpec(_ce_dice, 0.1, "SIFA: per-batch (1 - frequency) weighted CE + soft Dice"),
    "dice_focal": LossSpec(_dice_focal, 1.0, "DAR-UNet: soft Dice + 10 x focal (gamma 2)"),
    "gdice_ce": LossSpec(_gdice_ce, 1.0, "BiGL: generalized Dice (w = 1/count) + CE"),
}


def list_losses() -> list[str]:
    return sorted(LOSSES)


def _check_options(name: str, builder: Callable, kw: dict) -> None:
    accepted = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
    for key in kw:
        look_up_option(key, accepted, what=f'option of loss "{name}"')


def create_loss(
    name: str,
    num_classes: int,
    *,
    aux_weight: float | None = None,
    class_weights: ClassWeights = None,
    ignore_index: int = -100,
    **kw,
) -> SegmentationLoss:
    """Build a registered loss.

    name: one of :data:`LOSSES`; unknown names raise :class:`UdasegError` with "did you mean".
    num_classes: C, background included. aux_weight: weight of each auxiliary head (None: the
    paper's, see :data:`LOSSES`). class_weights: None (the loss's default: per-batch
    ``"complement"`` for ``ce_dice``, uniform otherwise), a mode of :data:`WEIGHT_MODES`, or C
    floats; used by the CE / focal terms. ignore_index: target value of unlabelled voxels.
    kw: the loss's own options (``include_background``, ``smooth``, ``squared_pred``, ``gamma``,
    ``focal_weight``, ``weight_power``, ...; see the builders).
    """
    look_up_option(name, LOSSES, what="loss")
    if num_classes < 1:
        raise UdasegError(f"loss {name} needs at least one class, got {num_classes}", exit_code=2)
    spec = LOSSES[name]
    _check_options(name, spec.builder, kw)
    if isinstance(class_weights, str):
        look_up_option(class_weights, WEIGHT_MODES, what="class weighting")
    elif class_weights is not None:
        batch_class_weights(class_weights, torch.zeros(num_classes))  # checks the length now
    terms = spec.builder(num_classes, class_weights=class_weights, **kw)
    weight = spec.aux_weight if aux_weight is None else aux_weight
    return SegmentationLoss(name, num_classes, terms, aux_weight=weight, ignore_index=ignore_index)
