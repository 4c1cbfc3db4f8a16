"""glua.v1: the local feature mask from D1's uncertainty, the three updates, and a plain model
afterwards (tiny U-Net and DeepLab on 32x32 random slices, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from udaseg.adaptation import glua
from udaseg.adaptation.base import AdaptBatch, AdaptContext
from udaseg.adaptation.registry import COMMON_DEFAULTS
from udaseg.models.registry import create_model
from udaseg.training.loop import Runtime

NUM_CLASSES = 3
TINY_MODELS = {
    "unet2d.v1": {"in_channels": 1, "num_classes": 3, "base_channels": 4, "depth": 3},
    "deeplabv2.v1": {
        "in_channels": 1,
        "num_classes": 3,
        "depth": 50,
        "width": 8,
        "layers": [1, 1, 1, 1],
    },
}
SMALL = {"d1_width": 16, "d2_width": 8, "batch_size": 2, "patch_size": [32, 32], "steps": 10}


def build(model: str = "unet2d.v1", **overrides):
    torch.manual_seed(0)
    hparams = COMMON_DEFAULTS | glua.GLUA_HPARAMS | SMALL | overrides
    ctx = AdaptContext(
        model=model,
        model_kwargs=dict(TINY_MODELS[model]),
        num_classes=NUM_CLASSES,
        hparams=hparams,
        # contiguous: the trained model is compared bit for bit with a plain (contiguous) one
        runtime=Runtime(device="cpu", channels_last=False),
        generator=torch.Generator().manual_seed(0),
    )
    return glua.glua(ctx)


def batch(seed: int = 0) -> AdaptBatch:
    g = torch.Generator().manual_seed(seed)
    return AdaptBatch(
        source=torch.randn(2, 1, 32, 32, generator=g),
        labels=torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=g),
        target=torch.randn(2, 1, 32, 32, generator=g) + 0.5,
    )


def set_d1_output(d1: torch.nn.Module, logit: float) -> None:
    """Make D1 output ``logit`` everywhere (last 1x1 conv: zero weights, constant bias)."""
    last = d1.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(logit)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    after = module.state_dict()
    return any(
        not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point()
    )


def test_mask_is_normalised_binary_entropy_of_d1():
    logits = torch.tensor([0.0, math.log(1 / 3), -math.log(1 / 3), 30.0, -30.0]).view(1, 1, 1, 5)
    mask = glua.uncertainty_mask(logits).flatten()
    h_quarter = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)  # p = 1/4, 3/4
    expected = torch.tensor([1.0, h_quarter, h_quarter, 0.0, 0.0])
    assert torch.allclose(mask, expected, atol=1e-6)


@pytest.mark.parametrize("model", list(TINY_MODELS))
def test_steps_update_every_network_and_report_finite_losses(model):
    method = build(model)
    before = {name: snapshot(m) for name, m in method.modules.items()}
    for seed in range(2):
        losses = method.train_step(batch(seed))
    for key in ("total", "adv1", "adv2", "d1", "d2", "mask_mean"):
        assert math.isfinite(losses[key]), key
    assert 0.0 <= losses["mask_mean"] <= 1.0
    for name, module in method.modules.items():
        assert changed(before[name], module), f"{name} did not change"


@pytest.mark.parametrize("model", list(TINY_MODELS))
def test_mask_has_feature_shape_and_reweights_features_before_predictor(model):
    method = build(model)
    # train mode: batch-norm on batch statistics, so the fresh bottleneck is not ~0 as in eval
    net, d1 = method.modules["model"].train(), method.modules["d1"]
    x = batch().target
    set_d1_output(d1, 0.0)  # D1 says 0.5 everywhere: fully uncertain, the extreme mask value 1
    with torch.no_grad():
        plain = net(x)
        masked = glua.masked_forward(net, d1, x)
    features = plain["features"]
    assert masked.mask.shape == (2, 1, *features.shape[2:])
    assert torch.equal(masked.mask, torch.ones_like(masked.mask))
    assert torch.equal(masked.features, features)
    assert torch.allclose(masked.out["features"], 2 * features)  # residual: f * (1 + M)
    assert not torch.allclose(masked.out["logits"], plain["logits"])
    with torch.no_grad():
        again = net(x)  # the mask is gone after the masked pass
    assert torch.equal(again["logits"], plain["logits"])


def test_step_mask_comes_from_d1_output():
    method = build()
    set_d1_output(method.modules["d1"], 0.0)
    assert method.train_step(batch())["mask_mean"] == 1.0
    method = build()
    set_d1_output(method.modules["d1"], 25.0)  # D1 certain: no uncertainty left
    assert method.train_step(batch())["mask_mean"] < 1e-6


@pytest.mark.parametrize("model", list(TINY_MODELS))
def test_source_is_not_masked(model):
    """Only target features are re-weighted (Sec. III-A): L_seg on the source batch is the same
    whether D1 leaves the mask at 1 or at 0."""
    seg = []
    for logit in (0.0, 25.0):
        method = build(model)
        set_d1_output(method.modules["d1"], logit)
        seg.append(method.train_step(batch())["main"])
    assert seg[0] == seg[1]


def test_product_mode_scales_features_by_the_mask():
    method = build(mask_mode="product")
    net, d1 = method.modules["model"].eval(), method.modules["d1"]
    set_d1_output(d1, math.log(3.0))  # p = 3/4
    with torch.no_grad():
        masked = glua.masked_forward(net, d1, batch().target, mode="product")
    assert torch.allclose(masked.out["features"], masked.features * masked.mask)
    assert 0.0 < float(masked.mask.mean()) < 1.0


def test_same_seed_same_losses_and_weights():
    runs = []
    for _ in range(2):
        method = build()
        losses = [method.train_step(batch(seed)) for seed in range(2)]
        runs.append((losses, snapshot(method.modules["model"])))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())


@pytest.mark.parametrize("model", list(TINY_MODELS))
def test_trained_weights_load_into_a_plain_model_for_predict(model):
    method = build(model)
    method.train_step(batch())
    trained = method.modules["model"].eval()
    plain = create_model(model, **TINY_MODELS[model]).eval()
    plain.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(1, 1, 40, 48)
    with torch.no_grad():
        expected, got = trained(x)["logits"], plain(x)["logits"]
    assert got.shape == (1, NUM_CLASSES, 40, 48)
    assert torch.isfinite(got).all()
    assert torch.equal(got, expected)


def test_extras_save_target_masks(tmp_path):
    method = build()
    method.train_step(batch())
    data = batch(1)
    method.extras(tmp_path, data)
    masks = np.load(tmp_path / "feature_masks.npy")
    with torch.no_grad():
        features = method.modules["model"].eval()(data.target)["features"]
    assert masks.shape == (2, *features.shape[2:])
    assert masks.dtype == np.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert (tmp_path / "feature_masks.png").stat().st_size > 0
    assert method.modules["model"].training is False  # extras restores the mode it found


def test_unknown_mask_mode_is_refused():
    from udaseg.errors import UdasegError

    with pytest.raises(UdasegError, match="did you mean"):
        build(mask_mode="residuals")
