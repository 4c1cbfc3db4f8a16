"""Segmentation losses: values on hand-checked cases, robustness, aux heads, and that they train."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from udaseg.errors import UdasegError
from udaseg.losses import (
    batch_class_weights,
    create_loss,
    generalized_dice_weights,
    list_losses,
)

NAMES = ["ce", "ce_dice", "dice_focal", "gdice_ce"]
C = 4


def _target(shape=(2, 12, 12), classes=C, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, shape, generator=gen)


def _logits(shape, seed=1, requires_grad=False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).requires_grad_(requires_grad)


def _confident(target: torch.Tensor, classes=C, margin=30.0) -> torch.Tensor:
    return F.one_hot(target, classes).movedim(-1, 1).float() * margin


def _out(logits, aux=()):
    return {"logits": logits, "aux": list(aux)}


def test_registry_lists_the_paper_losses():
    assert list_losses() == sorted(NAMES)


def test_unknown_name_and_option_say_did_you_mean():
    with pytest.raises(UdasegError, match='did you mean "ce_dice"'):
        create_loss("ce_dic", C)
    with pytest.raises(UdasegError, match='did you mean "gamma"'):
        create_loss("dice_focal", C, gama=2.0)
    with pytest.raises(UdasegError, match="class weighting"):
        create_loss("ce", C, class_weights="inverse_freq")
    with pytest.raises(UdasegError, match="4 classes"):
        create_loss("ce", C, class_weights=[1.0, 2.0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial", [(12, 12), (3, 6, 6)])
def test_perfect_prediction_is_near_zero(name, spatial):
    target = _target((2, *spatial))
    total, parts = create_loss(name, C)(_out(_confident(target)), target)
    assert total.item() < 1e-4
    for key in ("ce", "dice", "focal", "gdice"):
        assert parts.get(key, 0.0) < 1e-4


@pytest.mark.parametrize(
    "weights", [None, "uniform", "complement", "inverse_frequency", [0.5, 1.0, 2.0, 3.0]]
)
def test_uniform_logits_give_log_c(weights):
    target = _target()
    _, parts = create_loss("ce", C, class_weights=weights)(_out(torch.zeros(2, C, 12, 12)), target)
    assert parts["ce"] == pytest.approx(math.log(C), rel=1e-6)


def test_ce_matches_torch_with_weights_and_ignore_index():
    target = _target()
    target[0, :3] = -100
    logits = _logits((2, C, 12, 12))
    weights = [0.5, 1.0, 2.0, 3.0]
    _, parts = create_loss("ce", C, class_weights=weights)(_out(logits), target)
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=-100)
    assert parts["ce"] == pytest.approx(expected.item(), rel=1e-5)


def test_focal_with_gamma_zero_equals_ce():
    target, logits = _target(), _logits((2, C, 12, 12))
    for weights in (None, "inverse_frequency"):
        ce = create_loss("ce", C, class_weights=weights)(_out(logits), target)[1]["ce"]
        focal = create_loss("dice_focal", C, gamma=0.0, class_weights=weights)(
            _out(logits), target
        )[1]["focal"]
        assert focal == pytest.approx(ce, rel=1e-6)
    focal2 = create_loss("dice_focal", C)(_out(logits), target)[1]["focal"]
    assert focal2 < ce  # gamma 2 discounts the well-classified voxels


def test_dice_focal_is_dice_plus_ten_focal():
    target, logits = _target(), _logits((2, C, 12, 12))
    _, parts = create_loss("dice_focal", C)(_out(logits), target)
    assert parts["main"] == pytest.approx(parts["dice"] + 10 * parts["focal"], rel=1e-6)


def test_batch_class_weights_by_hand():
    counts = torch.tensor([6.0, 2.0, 0.0, 1.0])
    inverse = batch_class_weights("inverse_frequency", counts)
    assert torch.allclose(inverse, torch.tensor([0.5, 1.5, 0.0, 3.0]))  # 9 / (3 * n_c)
    complement = batch_class_weights("complement", counts)
    assert torch.allclose(complement, torch.tensor([3, 7, 9, 8]) / 9.0)
    # an all-background batch would zero every complement weight: uniform instead
    only_bg = batch_class_weights("complement", torch.tensor([5.0, 0.0, 0.0, 0.0]))
    assert torch.equal(only_bg, torch.ones(4))


def test_inverse_frequency_ce_is_the_mean_of_per_class_means():
    target, logits = _target(), _logits((2, C, 12, 12))
    _, parts = create_loss("ce", C, class_weights="inverse_frequency")(_out(logits), target)
    nll = F.cross_entropy(logits, target, reduction="none")
    per_class = [nll[target == c].mean() for c in range(C)]
    assert parts["ce"] == pytest.approx(torch.stack(per_class).mean().item(), rel=1e-5)


def test_generalized_dice_weights_by_hand():
    counts = torch.tensor([6.0, 2.0, 1.0])
    assert torch.allclose(generalized_dice_weights(counts, 1.0), torch.tensor([0.1, 0.3, 0.6]))
    sudre = generalized_dice_weights(counts, 2.0)
    assert torch.allclose(sudre, torch.tensor([1.0, 9.0, 36.0]) / 46.0)
    # an absent class takes the largest present weight: raw (1/6, 1/2, 1/2) -> / (7/6)
    absent = generalized_dice_weights(torch.tensor([6.0, 0.0, 2.0]), 1.0)
    assert torch.allclose(absent, torch.tensor([1.0, 3.0, 3.0]) / 7.0)
    assert torch.equal(generalized_dice_weights(torch.zeros(3)), torch.zeros(3))


def test_generalized_dice_value_by_hand():
    # one row of 4 pixels, 2 classes; p(class 1) = 0.1, 0.2, 0.3, 0.6; target 0, 0, 0, 1
    p1 = torch.tensor([0.1, 0.2, 0.3, 0.6])
    logits = torch.log(torch.stack([1 - p1, p1])).view(1, 2, 1, 4)
    target = torch.tensor([[[0, 0, 0, 1]]])
    _, parts = create_loss("gdice_ce", 2, smooth=0.0)(_out(logits), target)
    # w = (1/3, 1)/(4/3) = (0.25, 0.75); intersections (2.4, 0.6); sums p + g: (2.8 + 3, 1.2 + 1)
    expected = 1 - 2 * (0.25 * 2.4 + 0.75 * 0.6) / (0.25 * 5.8 + 0.75 * 2.2)
    assert parts["gdice"] == pytest.approx(expected, rel=1e-5)


def test_soft_dice_value_by_hand_and_background_option():
    p1 = torch.tensor([0.1, 0.2, 0.3, 0.6])
    logits = torch.log(torch.stack([1 - p1, p1])).view(1, 2, 1, 4)
    target = torch.tensor([[[0, 0, 0, 1]]])
    fg = create_loss("ce_dice", 2, smooth=0.0)(_out(logits), target)[1]["dice"]
    assert fg == pytest.approx(1 - 2 * 0.6 / (0.01 + 0.04 + 0.09 + 0.36 + 1), rel=1e-5)
    plain = create_loss("ce_dice", 2, smooth=0.0, squared_pred=False)(_out(logits), target)
    assert plain[1]["dice"] == pytest.approx(1 - 2 * 0.6 / (1.2 + 1), rel=1e-5)
    both = create_loss("ce_dice", 2, smooth=0.0, include_background=True)(_out(logits), target)
    dice_bg = 2 * 2.4 / (0.81 + 0.64 + 0.49 + 0.16 + 3)
    assert both[1]["dice"] == pytest.approx(1 - (dice_bg + 1 - fg) / 2, rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_absent_classes_and_empty_targets_stay_finite(name):
    loss = create_loss(name, C)
    for target in (
        _target(classes=2),
        torch.zeros(2, 12, 12, dtype=torch.long),
        torch.full((2, 12, 12), -100),
    ):
        logits = _logits((2, C, 12, 12), requires_grad=True)
        total, parts = loss(_out(logits), target)
        total.backward()
        assert torch.isfinite(total) and all(math.isfinite(v) for v in parts.values())
        assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_for_extreme_logits(name):
    target = _target()
    logits = (_logits((2, C, 12, 12)) * 80).requires_grad_(True)
    total, _ = create_loss(name, C)(_out(logits), target)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_aux_heads_add_with_the_weight(name):
    target = _target()
    main, aux1, aux2 = (_logits((2, C, 12, 12), seed=s) for s in (1, 2, 3))
    loss = create_loss(name, C, aux_weight=0.3)
    head = [loss.head_loss(x, target)[0].item() for x in (main, aux1, aux2)]
    total, parts = loss(_out(main, [aux1, aux2]), target)
    assert parts["main"] == pytest.approx(head[0], rel=1e-6)
    assert parts["aux"] == pytest.approx(0.3 * (head[1] + head[2]), rel=1e-6)
    assert total.item() == pytest.approx(head[0] + 0.3 * (head[1] + head[2]), rel=1e-6)
    assert parts["total"] == pytest.approx(total.item(), rel=1e-6)
    assert loss(_out(main), target)[1]["aux"] == 0.0


def test_paper_default_aux_weights():
    assert create_loss("ce_dice", C).aux_weight == 0.1  # SIFA lambda_seg^2
    assert create_loss("dice_focal", C).aux_weight == 1.0  # DAR-UNet: every branch alike


@pytest.mark.parametrize("name", NAMES)
def test_3d_equals_the_same_voxels_laid_out_in_2d(name):
    target = _target((2, 3, 5, 6))
    logits = _logits((2, C, 3, 5, 6))
    loss = create_loss(name, C)
    total3, parts3 = loss(_out(logits), target)
    total2, parts2 = loss(_out(logits.reshape(2, C, 15, 6)), target.reshape(2, 15, 6))
    assert total3.shape == () and total3.item() == pytest.approx(total2.item(), rel=1e-5)
    assert parts3.keys() == parts2.keys()


@pytest.mark.parametrize("name", NAMES)
def test_ignored_voxels_do_not_contribute(name):
    target = _target()
    target[:, :4] = -100
    logits = _logits((2, C, 12, 12), requires_grad=True)
    loss = create_loss(name, C)
    total, _ = loss(_out(logits), target)
    total.backward()
    assert torch.all(logits.grad[:, :, :4] == 0)
    scrambled = logits.detach().clone()
    scrambled[:, :, :4] = _logits((2, C, 4, 12), seed=9) * 10
    assert loss(_out(scrambled), target)[0].item() == pytest.approx(total.item(), rel=1e-6)


def _one_hot_reference(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The formulas of the module docstring written with a full one-hot target, in float64."""
    valid = target != -100
    labels = torch.where(valid, target, 0)
    g = F.one_hot(labels, C).movedim(-1, 1).double() * valid.unsqueeze(1)
    logp = F.log_softmax(logits.double(), 1)
    p = logp.exp() * valid.unsqueeze(1)
    dims = (0, 2, 3)
    counts = g.sum(dims)
    logp_y = (logp * g).sum(1)

    def weighted_mean(per_voxel, w_c):
        w = (g * w_c.view(1, -1, 1, 1)).sum(1)
        return (w * per_voxel).sum() / w.sum()

    def soft_dice():
        dice = (2 * (p * g).sum(dims) + 1) / ((p * p).sum(dims) + counts + 1)
        return 1 - dice[1:].mean()

    if name == "ce":
        return weighted_mean(-logp_y, torch.ones(C, dtype=torch.float64))
    if name == "ce_dice":
        return weighted_mean(-logp_y, 1 - counts / counts.sum()) + soft_dice()
    if name == "dice_focal":
        focal = -((1 - logp_y.exp()) ** 2) * logp_y
        return soft_dice() + 10 * weighted_mean(focal, torch.ones(C, dtype=torch.float64))
    w = 1 / counts
    w = w / w.sum()
    gdice = 1 - (2 * (w * (p * g).sum(dims)).sum() + 1) / ((w * (p.sum(dims) + counts)).sum() + 1)
    return gdice + weighted_mean(-logp_y, torch.ones(C, dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_match_the_one_hot_formulas(name):
    # the terms sum each class's voxels by label rather than through a one-hot product
    target = _target((2, 16, 16), seed=3)
    target[0, :3] = -100
    logits = _logits((2, C, 16, 16), seed=4, requires_grad=True) * 2
    total, _ = create_loss(name, C)(_out(logits), target)
    (grad,) = torch.autograd.grad(total, logits)
    wide = logits.detach().double().requires_grad_(True)
    expected = _one_hot_reference(name, wide, target)
    (expected_grad,) = torch.autograd.grad(expected, wide)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-7)


def test_out_of_range_target_and_bad_shapes_raise():
    loss = create_loss("ce", C)
    with pytest.raises(ValueError, match="outside 0..3"):
        loss(_out(torch.zeros(1, C, 4, 4)), torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match="does not match"):
        loss(_out(torch.zeros(1, C, 4, 4)), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="logits must be"):
        loss(_out(torch.zeros(1, 3, 4, 4)), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match"):  # an aux head of another size
        loss(_out(torch.zeros(1, C, 4, 4), [torch.zeros(1, C, 2, 2)]), torch.zeros(1, 4, 4).long())


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_computes_in_float32(name):
    target = _target()
    base = _logits((2, C, 12, 12))
    loss = create_loss(name, C)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = base.bfloat16().requires_grad_(True)
        total, _ = loss(_out(logits), target)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(
        loss(_out(logits.detach().float()), target)[0].item(), rel=1e-6
    )
    total.backward()
    assert torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_few_sgd_steps_lower_the_loss(name):
    target = _target((2, 8, 8))
    logits = torch.zeros(2, C, 8, 8, requires_grad=True)
    aux = torch.zeros(2, C, 8, 8, requires_grad=True)
    loss = create_loss(name, C)
    history = []
    for _ in range(6):  # plain SGD, lr 20 (the losses are means over 128 voxels)
        total, _ = loss(_out(logits, [aux]), target)
        grads = torch.autograd.grad(total, [logits, aux])
        with torch.no_grad():
            logits -= 20.0 * grads[0]
            aux -= 20.0 * grads[1]
        history.append(total.item())
    assert all(b < a for a, b in zip(history, history[1:], strict=False)), history
    assert history[-1] < 0.7 * history[0]
