"""DAR-UNet's CPU fast path (channels-last activations, FFT QAM convs, matrix-product 1x1x1 and
patch-upsampling convs, centred GroupNorm, QAM pooling and gating as autograd functions) computes
the same function as a plain reading of the architecture: forward outputs, parameter gradients
and the input gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from udaseg.models import create_model
from udaseg.models.blocks import resize_to
from udaseg.models.darunet import (
    QAM_VIEWS,
    AxisZPool,
    CentredGroupNorm,
    GatedResidual,
    QuartetAttention,
    fft_conv3d,
)

# --- a straightforward reference: the layers' parameters through plain PyTorch functions ---------


def ref_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    return F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding)


def ref_norm_act(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps), 0.01)


def ref_qam(qam: QuartetAttention, x: torch.Tensor) -> torch.Tensor:
    """The paper's four branches: permute, Z-pool, k^3 conv, sigmoid, gate, permute back, mean."""
    gated = []
    for branch in qam.branches:
        view = x.permute(branch.perm)
        pooled = torch.cat([view.amax(1, keepdim=True), view.mean(1, keepdim=True)], dim=1)
        gate = torch.sigmoid(ref_conv(branch.conv, pooled))
        gated.append((view * gate).permute(branch.inverse))
    return sum(gated) / 4


def ref_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    norm1, _, conv1, norm2, _, conv2 = block.body
    residual = ref_conv(conv2, ref_norm_act(norm2, ref_conv(conv1, ref_norm_act(norm1, x))))
    if isinstance(block.qam, QuartetAttention):
        residual = ref_qam(block.qam, residual)
    skip = x if isinstance(block.skip, nn.Identity) else ref_conv(block.skip, x)
    return skip + residual


def ref_skip(skip: nn.Module, x_e: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    if hasattr(skip, "score"):  # VAM
        pooled = F.max_pool3d(x_e, skip.pool.kernel_size, skip.pool.stride)
        norm, _, score = skip.score
        summed = ref_conv(skip.proj_e, pooled) + ref_conv(skip.proj_d, x_d)
        x_d = x_d * torch.sigmoid(ref_conv(score, ref_norm_act(norm, summed)))
    up = F.conv_transpose3d(x_d, skip.up.weight, skip.up.bias, skip.up.stride)
    return torch.cat([up, x_e], dim=1)


def ref_forward(model: nn.Module, x: torch.Tensor) -> dict:
    first_conv, first_block = model.encoder[0]
    levels = [ref_block(first_block, ref_conv(first_conv, x))]
    for block in model.encoder[1:]:
        levels.append(ref_block(block, levels[-1]))
    features = levels.pop()
    outs, h = [features], features
    for skip, block in zip(model.skips, model.decoder, strict=True):
        h = ref_block(block, ref_skip(skip, levels.pop(), h))
        outs.append(h)
    if not model.deep_supervision:
        return {"logits": ref_conv(model.heads[0], outs[-1]), "aux": [], "features": features}
    aux = [resize_to(ref_conv(h, o), x.shape[2:]) for h, o in zip(model.heads, outs, strict=True)]
    return {"logits": ref_conv(model.fuse, torch.cat(aux, dim=1)), "aux": aux, "features": features}


# --- comparison ----------------------------------------------------------------------------------

VARIANTS = [
    ("dar-unet.v1", {"channels": [4, 8, 8, 8, 8]}),
    ("dar-unet.v1", {"channels": [8, 16, 16, 16, 16]}),  # several GroupNorm groups
    ("dar-unet.v1", {"channels": [4, 8, 8, 8, 8], "deep_supervision": False}),
    ("resunet3d.v1", {"channels": [4, 8, 8, 8, 8]}),
]


def outputs_and_gradients(forward, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every output and every gradient of a fixed weighted sum of the outputs."""
    model.zero_grad()
    x = x.clone().requires_grad_()
    out = forward(x)
    tensors = {"logits": out["logits"], "features": out["features"]}
    tensors |= {f"aux{i}": a for i, a in enumerate(out["aux"])}
    loss = sum(
        (t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view_as(t)).sum()
        for t in tensors.values()
    )
    loss.backward()
    found = {k: t.detach() for k, t in tensors.items()} | {"input.grad": x.grad}
    found |= {f"{n}.grad": p.grad.clone() for n, p in model.named_parameters()}
    assert all(t.is_contiguous() for t in tensors.values()), "outputs leave contiguous"
    return found


def relative_errors(found: dict, expected: dict) -> dict[str, float]:
    """Per tensor: |found - expected| / |expected| (Frobenius norms)."""
    assert found.keys() == expected.keys()
    return {
        k: ((found[k].double() - expected[k].double()).norm() / expected[k].double().norm()).item()
        for k in expected
    }


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS)
def test_fast_path_is_the_reference_function_in_float64(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=3, **kwargs).double()
    x = torch.randn(
        2, 1, 8, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    fast = outputs_and_gradients(model, model, x)
    reference = outputs_and_gradients(lambda t: ref_forward(model, t), model, x)
    errors = relative_errors(fast, reference)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-9, f"{name} {kwargs}: {worst} differs by {errors[worst]:.1e}"


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS[:2])
def test_fast_path_in_float32_is_as_accurate_as_the_plain_layers(name: str, kwargs: dict) -> None:
    # float32 gradients of some biases lose digits to cancellation in any implementation, so
    # the bar is the plain layers' own float32 error (or 1e-4, whichever is larger)
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=3, **kwargs)
    x = torch.randn(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    fast = outputs_and_gradients(model, model, x)
    plain = outputs_and_gradients(lambda t: ref_forward(model, t), model, x)
    model64 = model.double()
    exact = outputs_and_gradients(lambda t: ref_forward(model64, t), model64, x.double())
    fast_errors, plain_errors = relative_errors(fast, exact), relative_errors(plain, exact)
    for key, error in fast_errors.items():
        limit = max(1e-4, 10 * plain_errors[key])
        assert error < limit, f"{name} {kwargs}: {key} differs by {error:.1e} (limit {limit:.1e})"


def test_channels_last_parameters_as_the_training_loop_sets_them_change_nothing() -> None:
    torch.manual_seed(0)
    model = create_model("dar-unet.v1", in_channels=1, num_classes=3, channels=[4, 8, 8, 8, 8])
    x = torch.randn(2, 1, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    before = outputs_and_gradients(model, model, x)
    model.to(memory_format=torch.channels_last_3d)
    after = outputs_and_gradients(model, model, x.contiguous(memory_format=torch.channels_last_3d))
    errors = relative_errors(after, before)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-5, f"{worst} differs by {errors[worst]:.1e}"


def test_fft_conv_equals_conv3d_for_uneven_shapes_and_channels() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 9, 14, dtype=torch.float64, generator=gen)
    weight = torch.randn(2, 3, 7, 7, 7, dtype=torch.float64, generator=gen)
    bias = torch.randn(2, dtype=torch.float64, generator=gen)
    expected = F.conv3d(x, weight, bias, padding=3)
    assert torch.allclose(fft_conv3d(x, weight, bias), expected, rtol=0, atol=1e-10)


def test_centred_group_norm_keeps_float32_accuracy_when_the_mean_dwarfs_the_spread() -> None:
    # PyTorch's channels-last CPU GroupNorm alone is off by ~1e-4 here; centred, ~1e-7
    norm = CentredGroupNorm(2, 16)
    nn.init.normal_(norm.weight)
    x = 100 + torch.randn(2, 16, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    x_last = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    norm(x_last).backward(grad)
    x64 = x.double().requires_grad_()
    F.group_norm(x64, 2, norm.weight.double(), norm.bias.double()).backward(grad.double())
    error = (x_last.grad.double() - x64.grad).norm() / x64.grad.norm()
    assert error < 1e-5


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_axis_pools_match_amax_and_mean_and_share_tied_gradients(layout) -> None:
    # integer values: many tied maxima along every axis
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 4, 5, 6, 7), generator=gen).double()
    x = x.contiguous(memory_format=layout)
    pooled_shapes = [
        (2, 2, *(s for i, s in enumerate(x.shape) if i not in (0, a))) for a in range(1, 5)
    ]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in pooled_shapes]
    fast_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast = AxisZPool.apply(fast_x, (1, 2, 3, 4))
    reference = []
    for perm in QAM_VIEWS.values():
        view = ref_x.permute(perm)
        reference.append(torch.cat([view.amax(1, keepdim=True), view.mean(1, keepdim=True)], 1))
    for f, r in zip(fast, reference, strict=True):
        assert torch.allclose(f, r, rtol=0, atol=1e-12)
    sum((f * g).sum() for f, g in zip(fast, grads, strict=True)).backward()
    sum((r * g).sum() for r, g in zip(reference, grads, strict=True)).backward()
    assert torch.allclose(fast_x.grad, ref_x.grad, rtol=0, atol=1e-12)


def test_gated_residual_equals_skip_plus_product_with_broadcast_maps() -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (2, 3, 4, 5, 6)
    skip, r = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    r = r.contiguous(memory_format=torch.channels_last_3d)
    map_shapes = [(2, 1, 4, 5, 6), (2, 3, 1, 5, 6), (2, 3, 4, 1, 6), (2, 3, 4, 5, 1)]
    maps = [torch.rand(s, generator=gen, dtype=torch.float64) for s in map_shapes]
    inputs = [t.clone().requires_grad_() for t in (skip, r, *maps)]
    copies = [t.clone().requires_grad_() for t in (skip, r, *maps)]
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    GatedResidual.apply(*inputs).backward(grad)
    (copies[0] + copies[1] * sum(copies[2:])).backward(grad)
    for a, b in zip(inputs, copies, strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_bfloat16_autocast_gives_float32_like_gradients_at_depth_two() -> None:
    # a depth-8 patch has a depth-2 bottleneck, where oneDNN's bfloat16 conv3d weight
    # gradients are wrong (inf, nan or relative error 1) unless worked around
    torch.manual_seed(0)
    model = create_model("dar-unet.v1", in_channels=1, num_classes=3, channels=[4, 8, 8, 16, 32])
    x = torch.randn(1, 1, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    gradients = []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)["logits"].float()
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    exact, rounded = gradients
    assert torch.isfinite(rounded).all()
    assert (rounded - exact).norm() / exact.norm() < 0.1
