"""DAR-UNet, the 3D dual-attention residual U-Net of Yao et al., and its ResU-Net ablation baseline.

Follows Sec. III-B of the DAR-UNet paper (Fig. 5):

* five levels (channels 16/32/64/128/256) of pre-activation residual blocks (GroupNorm -> act ->
  conv, twice, plus the skip); the first two downsamplings use stride (1, 2, 2) and the last two
  (2, 2, 2) (Sec. III-B.3, "anisotropic resolution network"), so a 32x256x256 patch gives levels
  32x256x256, 32x128x128, 32x64x64, 16x32x32, 8x16x16;
* VAM (Sec. III-B.1) on every skip connection: a voxel-wise attention map computed from the encoder
  feature X_e and the decoder feature X_d re-weights X_d before it is upsampled and concatenated
  with X_e;
* QAM (Sec. III-B.2, Eq. for y) in every residual block: four branches, one per view (D,H,W),
  (C,H,W), (C,D,W), (C,D,H); each Z-pools (max and mean) the remaining axis, applies a 3D conv of
  size k and a sigmoid, gates its view, and the four gated tensors are averaged;
* deep supervision (Sec. III-B.4): a 1x1x1 head on each of the five levels (the bottleneck and
  the four decoder levels), upsampled trilinearly to the input size, and a primary head that fuses
  the five (a 1x1x1 conv over their concatenation).

Interpretations where the text leaves details open (documented so they can be revisited):

* the first level starts with a plain 3x3x3 conv from the image (pre-activating a 1-channel image
  with GroupNorm would only normalise it), followed by a residual block;
* downsampling is a strided first conv in the level's residual block (with a strided 1x1x1
  projection on the skip); upsampling is a transposed conv with kernel = stride;
* VAM is an additive attention gate evaluated at the decoder's resolution: max-pooled X_e and X_d
  are projected by 1x1x1 convs, summed, GN -> LeakyReLU -> 1x1x1 conv -> sigmoid gives a one-channel
  map that multiplies X_d;
* QAM sits on the residual branch of a block (before the skip is added), convs have k = 7 (as in
  triplet attention, which QAM extends) and no normalisation, as the equation has none;
* activations are LeakyReLU(0.01); GroupNorm uses groups of 8 channels (fewer for narrow variants).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from udaseg.errors import UdasegError
from udaseg.models.blocks import as_int_tuple, group_count, resize_to
from udaseg.models.registry import register_model

DEFAULT_CHANNELS = (16, 32, 64, 128, 256)
DEFAULT_STRIDES = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))

# DAR-UNet Sec. IV-A: AdaBelief (here AdamW, its closest built-in relative; AdaBelief's default has
# no weight decay), lr 5e-4 with cosine decay, 100 epochs at batch 2 of 32x256x256 sub-volumes,
# soft Dice + 10 x Focal on every prediction branch. 25k steps ~ 100 epochs of the CrossMoDA source
# set (105 volumes x 5 styles, one crop each, batch 2).
DARUNET_HPARAMS = {
    "optimizer": "adamw",
    "lr": 5e-4,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,
    "schedule": "cosine",
    "loss": "dice_focal",
    "aux_weight": 1.0,
    "batch_size": 2,
    "patch_size": [32, 256, 256],
    "steps": 25000,
}

TINY_3D = {"channels": [4, 8, 8, 8, 8]}

# the four QAM views as permutations of (N, C, D, H, W): the pooled axis moves to position 1
QAM_VIEWS = {
    "dhw": (0, 1, 2, 3, 4),  # pool C, gate (D, H, W)
    "chw": (0, 2, 1, 3, 4),  # pool D, gate (C, H, W)
    "cdw": (0, 3, 1, 2, 4),  # pool H, gate (C, D, W)
    "cdh": (0, 4, 1, 2, 3),  # pool W, gate (C, D, H)
}


def _act() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


def _gn(channels: int, inplace: bool = False) -> nn.GroupNorm:
    return CentredGroupNorm(group_count(channels), channels, inplace=inplace)


# CPU speed (see docs/results/performance.md): activations live in channels-last order, where
# oneDNN's 3D convs are fastest; 1x1x1 convs and kernel = stride transposed convs run as matrix
# products over the channel axis; QAM's 7^3 convs run as FFTs and its pooling and gating as two
# autograd functions that read tensors in memory order. Same parameters and initialisation, same
# mathematics, float rounding differences only (tests/models/test_darunet_fast_path.py checks
# outputs and gradients against a plain implementation). Other devices run the plain layers.


def _layout(x: torch.Tensor) -> torch.memory_format:
    """x's memory format: channels-last when only that describes it, contiguous otherwise."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _to_fast_layout(x: torch.Tensor) -> torch.Tensor:
    """On the CPU, the (N, C, D, H, W) tensor stored channels-last (a no-op when it already is)."""
    if x.device.type != "cpu":
        return x
    return x.contiguous(memory_format=torch.channels_last_3d)


def _group_means(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Each (sample, group)'s mean of x (N, C, D, H, W), detached, broadcast to (N, C, 1, 1, 1)."""
    with torch.no_grad():
        n, c = x.shape[:2]
        means = x.mean(dim=(2, 3, 4)).view(n, groups, -1).mean(dim=2)
        return means.repeat_interleave(c // groups, dim=1).view(n, c, 1, 1, 1)


class _ShiftedGroupNorm(torch.autograd.Function):
    """group_norm(x - shift) for a constant shift, keeping only x for the backward (x is kept
    for other layers anyway; x - shift is rebuilt there instead of doubling the memory)."""

    @staticmethod
    def forward(ctx, x, shift, weight, bias, groups: int, eps: float) -> torch.Tensor:
        n, c = x.shape[:2]
        ctx.sizes = (n, c, x[0, 0].numel(), groups)
        out, mean, rstd = torch.native_group_norm(x - shift, weight, bias, *ctx.sizes, eps)
        ctx.save_for_backward(x, shift, mean, rstd, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, shift, mean, rstd, weight = ctx.saved_tensors
        centred = x - shift
        grad = grad.contiguous(memory_format=_layout(centred))
        wanted = [ctx.needs_input_grad[i] for i in (0, 2, 3)]
        dx, dweight, dbias = torch.ops.aten.native_group_norm_backward(
            grad, centred, mean, rstd, weight, *ctx.sizes, wanted
        )
        return dx, None, dweight, dbias, None, None


class CentredGroupNorm(nn.GroupNorm):
    """GroupNorm that, on channels-last float32 CPU tensors, normalises x - (its group means).

    PyTorch's channels-last CPU kernel accumulates its sums in float32 less carefully than the
    contiguous one: gradient errors ~1e-5 relative where the contiguous kernel has ~1e-7, growing
    with |mean| / std (~1e-4 at 10), and up to 1e-2 on a cancellation-prone bias in a 4-channel
    test variant. GroupNorm is invariant to a constant shift per (sample, group), so normalising
    the centred input is the same function up to rounding, and measured as accurate as the
    contiguous kernel. bfloat16 inputs, whose own rounding is far coarser, are left alone.
    ``inplace=True`` centres the input in place (for inputs nothing else reads, e.g. a conv's
    output); otherwise the centred copy is not kept for the backward, which rebuilds it.
    """

    def __init__(self, num_groups: int, num_channels: int, inplace: bool = False) -> None:
        super().__init__(num_groups, num_channels)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cpu_channels_last = x.device.type == "cpu" and _layout(x) == torch.channels_last_3d
        if not (cpu_channels_last and x.dtype == torch.float32):
            return super().forward(x)
        shift = _group_means(x, self.num_groups)
        if self.inplace:
            return super().forward(x.sub_(shift))
        return _ShiftedGroupNorm.apply(x, shift, self.weight, self.bias, self.num_groups, self.eps)


def _computes_in_bfloat16(x: torch.Tensor) -> bool:
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class Conv3x3x3(nn.Conv3d):
    """A 3x3x3 conv (stride and padding as nn.Conv3d): on the CPU always oneDNN, channels-last.

    PyTorch sends float32 convs whose first four sizes multiply to <= 20480 to its slow reference
    kernel: at 32x256x256 the 1-channel image conv (2.3x slower here, fwd + bwd), at smaller
    patches the deep levels too; oneDNN is as fast or faster at every DAR-UNet size.

    torch 2.13's CPU bfloat16 conv3d returns wrong weight gradients (relative error 1, inf or
    nan) for inputs of depth 2 (seen from 16 channels, every time from 32), the bottleneck of a
    depth-8 patch. Such inputs are small, so they run in float32 and the result is rounded back
    to bfloat16.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        if x.shape[2] == 2 and _computes_in_bfloat16(x):
            with torch.autocast("cpu", enabled=False):
                bias = None if self.bias is None else self.bias.float()
                out = self._conv_forward(x.float(), self.weight.float(), bias)
            return out.to(torch.bfloat16)
        onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        if onednn and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
            if x.shape[1] == 1:  # strides that tell oneDNN "channels-last" (ambiguous for C = 1)
                x = torch.empty_like(x, memory_format=torch.channels_last_3d).copy_(x)
            args = (self.padding, self.stride, self.dilation, self.groups)
            return torch.mkldnn_convolution(_to_fast_layout(x), self.weight, self.bias, *args)
        return super().forward(x)


class PointwiseConv3d(nn.Conv3d):
    """A 1x1x1 conv (optionally strided). On the CPU: a matrix product over the channel axis,
    in whichever order (channels first or last) x is stored; oneDNN's 1x1x1 kernels are slow."""

    def __init__(
        self, cin: int, cout: int, stride: Sequence[int] = (1, 1, 1), bias: bool = True
    ) -> None:
        super().__init__(cin, cout, 1, stride=tuple(stride), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        if self.stride != (1, 1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1], :: self.stride[2]]
        weight = self.weight.flatten(1)  # (cout, cin)
        if x.stride(1) == 1:  # channels last
            return F.linear(x.movedim(1, -1), weight, self.bias).movedim(-1, 1)
        out = torch.bmm(weight.expand(x.shape[0], -1, -1), x.flatten(2))  # (n, cout, voxels)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1)
        return out.view(x.shape[0], -1, *x.shape[2:])


class PatchUpsample3d(nn.ConvTranspose3d):
    """Transposed conv with kernel = stride (no overlap). On the CPU: one matrix product giving
    every voxel's stride-sized output patch, then a reshuffle into place (channels-last)."""

    def __init__(self, cin: int, cout: int, stride: Sequence[int]) -> None:
        stride = tuple(stride)
        super().__init__(cin, cout, stride, stride=stride)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or output_size is not None:
            return super().forward(x, output_size)
        n, _, d, h, w = x.shape
        sd, sh, sw = self.stride
        # weight rows ordered (sd, sh, sw, cout): the reshuffle then moves whole channel vectors
        weight = self.weight.permute(2, 3, 4, 1, 0).flatten(0, 3)  # (patch * cout, cin)
        bias = None if self.bias is None else self.bias.repeat(sd * sh * sw)
        out = F.linear(x.movedim(1, -1), weight, bias)  # (n, d, h, w, patch * cout)
        out = out.view(n, d, h, w, sd, sh, sw, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return out.reshape(n, d * sd, h * sh, w * sw, -1).movedim(-1, 1)


class ZPool(nn.Module):
    """Concatenate max and mean over axis 1: (N, A, X, Y, Z) -> (N, 2, X, Y, Z)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)


class QAMConv(nn.Conv3d):
    """QAM's 2 -> 1 channel k^3 conv ("same" padding). On the CPU it runs as an FFT product.

    oneDNN's direct kernels for one output channel and a 7^3 window reach a few GFLOP/s, its
    backward well under that; the FFT form is the same cross-correlation (up to float32 rounding,
    about 1e-6 relative) and several times faster on these maps. Other devices use the conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        dtype = torch.promote_types(x.dtype, torch.float32)  # FFTs need float32 or wider
        with torch.autocast("cpu", enabled=False):
            bias = None if self.bias is None else self.bias.to(dtype)
            return fft_conv3d(x.to(dtype), self.weight.to(dtype), bias)


def _fft_size(n: int) -> int:
    """The smallest 5-smooth integer >= n: the sizes pocketfft transforms fastest."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=k // 2)`` for odd cubic k, computed with real FFTs.

    x (N, Cin, X, Y, Z), weight (Cout, Cin, k, k, k) -> (N, Cout, X, Y, Z), x's dtype (float32
    or float64: the FFTs take no narrower types).
    """
    k = weight.shape[-1]
    p = k // 2
    dims = (2, 3, 4)
    # a transform length >= n + p keeps the circular wrap-around out of the kept window
    size = [_fft_size(n + p) for n in x.shape[2:]]
    spectrum = torch.fft.rfftn(x, s=size, dim=dims)
    # the kernel is tiny: pad and transform it one axis at a time (rfftn would do three
    # full-size passes over mostly zeros)
    kernel = torch.fft.rfft(weight.flip(dims), n=size[2], dim=4)
    kernel = torch.fft.fft(torch.fft.fft(kernel, n=size[1], dim=3), n=size[0], dim=2)
    product = (spectrum.unsqueeze(1) * kernel).sum(dim=2)  # (N, Cout, ...), sum over Cin
    out = torch.fft.irfftn(product, s=size, dim=dims)
    out = out[:, :, p : p + x.shape[2], p : p + x.shape[3], p : p + x.shape[4]]
    return out if bias is None else out + bias.view(1, -1, 1, 1, 1)


def _reduction_order(x: torch.Tensor) -> tuple[int, ...]:
    """The permutation of (N, C, D, H, W) that lists x's axes in memory order (outermost first).

    Reductions over D, H or W of a channels-last tensor are an order of magnitude slower through
    the (N, C, D, H, W) view than through the contiguous (N, D, H, W, C) one.
    """
    return (0, 2, 3, 4, 1) if _layout(x) == torch.channels_last_3d else (0, 1, 2, 3, 4)


def _count_true(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """mask.sum(dim, keepdim=True) as int32, summing bytes (bool sums are very slow on the CPU)."""
    chunks = mask.view(torch.uint8).split(255, dim=dim)  # <= 255 per chunk: uint8 cannot wrap
    return sum(c.sum(dim, keepdim=True, dtype=torch.uint8).to(torch.int32) for c in chunks)


class AxisZPool(torch.autograd.Function):
    """Z-pools of x (N, C, D, H, W) along several axes at once, read in x's memory order.

    apply(x, axes) -> one (N, 2, ...) tensor per axis (max and mean over it, the other axes in
    order): the same numbers as permuting the axis to position 1 and Z-pooling, without the
    copies. The backward builds one full-size input gradient in place; as with ``amax``, tied
    maxima share their gradient equally.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, axes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        order = _reduction_order(x)
        inverse = tuple(order.index(i) for i in range(5))
        view = x.permute(order)  # contiguous in memory order
        pooled, maxima = [], []
        for axis in axes:
            dim = order.index(axis)
            m = view.amax(dim, keepdim=True)
            # sum / n rather than mean: bfloat16 means upcast a full-size copy first
            mean = view.sum(dim, keepdim=True) / view.shape[dim]
            maxima.append(m)
            pooled.append(torch.stack([t.permute(inverse).squeeze(axis) for t in (m, mean)], 1))
        ctx.axes, ctx.order = axes, order
        ctx.save_for_backward(x, *maxima)
        return tuple(pooled)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, *maxima = ctx.saved_tensors
        order = ctx.order
        view = x.permute(order)
        # full-size buffers are allocated once and reused: fresh ones cost page faults
        total, part, at_max = None, None, None
        for axis, m, grad in zip(ctx.axes, maxima, grads, strict=True):
            dim = order.index(axis)
            to_max, to_all = (grad[:, i].unsqueeze(axis).permute(order) for i in (0, 1))
            at_max = torch.eq(view, m, out=at_max)
            to_all = to_all / view.shape[dim]
            to_max = to_max / _count_true(at_max, dim).to(to_max.dtype) + to_all
            if total is None:
                total = torch.where(at_max, to_max, to_all)
            else:
                part = torch.where(at_max, to_max, to_all, out=part)
                total += part
        inverse = tuple(order.index(i) for i in range(5))
        return total.permute(inverse), None


def _sum_of_maps(maps: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The sum of maps broadcastable to ``like``, full-size in like's dtype and memory layout."""
    # bfloat16 broadcast adds are slow on the CPU: sum in float32, round once
    wide = torch.promote_types(like.dtype, torch.float32)
    total = maps[0].to(wide).expand_as(like).contiguous(memory_format=_layout(like))
    for extra in maps[1:]:
        total += extra
    return total.to(like.dtype)


class GatedResidual(torch.autograd.Function):
    """apply(skip, r, *maps) = skip + r * (sum of maps), each map broadcastable to r.

    The sum is built once in r's layout and kept for the backward (a full-size tensor per block:
    rebuilding it took four full-size passes per block and step); the backward reduces each
    map's gradient in memory order (see :func:`_reduction_order`), which autograd's own
    broadcast reduction does not.
    """

    @staticmethod
    def forward(ctx, skip: torch.Tensor, r: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
        total = _sum_of_maps(maps, r)
        ctx.save_for_backward(r, total, *maps)
        return torch.addcmul(skip, r, total)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        r, total, *maps = ctx.saved_tensors
        order = _reduction_order(r)
        inverse = tuple(order.index(i) for i in range(5))
        # the products in r's layout, whatever layout grad arrives in, one at a time
        product = torch.mul(grad, r, out=torch.empty_like(r)).permute(order)
        grad_maps = []
        for m in maps:
            dims = [order.index(i) for i in range(1, 5) if m.shape[i] == 1 and r.shape[i] != 1]
            reduced = product.sum(dims, keepdim=True) if dims else product
            grad_maps.append(reduced.permute(inverse).to(grad.dtype))
        del product
        # not in place into the saved sum: a second backward through a kept graph reads it
        return (grad, grad * total, *grad_maps)


class QAMBranch(nn.Module):
    """One QAM branch: permute to the view, Z-pool, conv k^3 + sigmoid, gate, permute back."""

    def __init__(self, perm: Sequence[int], kernel: int = 7) -> None:
        super().__init__()
        self.perm = tuple(perm)
        self.inverse = tuple(sorted(range(5), key=lambda i: self.perm[i]))
        self.axis = self.perm[1]  # the axis of (N, C, D, H, W) that this view pools
        self.pool = ZPool()
        self.conv = QAMConv(2, 1, kernel, padding=kernel // 2)

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """The attention map from this view's Z-pool (N, 2, ...), (0, 1), with its size-1 axis
        moved to the pooled axis so that it broadcasts against the (N, C, D, H, W) input."""
        return torch.sigmoid(self.conv(pooled)).movedim(1, self.axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gated tensor, written as the paper does: permute, pool, gate, permute back."""
        view = x.permute(self.perm)
        gated = view * torch.sigmoid(self.conv(self.pool(view)))
        return gated.permute(self.inverse)


class QuartetAttention(nn.Module):
    """QAM: the mean of the four branch outputs. (N, C, D, H, W) -> same shape."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.branches = nn.ModuleList(QAMBranch(p, kernel) for p in QAM_VIEWS.values())

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branch maps divided by four, each broadcastable to x.

        mean_i(x * g_i) = x * sum_i(g_i / 4): one full-size product instead of four (the
        quarter is exact in floating point).
        """
        pooled = AxisZPool.apply(x, tuple(branch.axis for branch in self.branches))
        return [
            0.25 * branch.gate(p).to(x.dtype)
            for branch, p in zip(self.branches, pooled, strict=True)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GatedResidual.apply(torch.zeros_like(x), x, *self.maps(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block, (N, cin, D, H, W) -> (N, cout, D/sd, H/sh, W/sw).

    residual = [GN -> act -> conv3 (stride)] -> [GN -> act -> conv3] -> QAM (optional);
    skip = identity, or a strided 1x1x1 conv where the width or resolution changes.
    """

    def __init__(
        self, cin: int, cout: int, stride: Sequence[int] = (1, 1, 1), qam_kernel: int | None = 7
    ) -> None:
        super().__init__()
        stride = tuple(stride)
        self.body = nn.Sequential(
            _gn(cin), _act(), Conv3x3x3(cin, cout, 3, stride=stride, padding=1, bias=False),
            _gn(cout, inplace=True), _act(), Conv3x3x3(cout, cout, 3, padding=1, bias=False),
        )  # fmt: skip
        self.qam = QuartetAttention(qam_kernel) if qam_kernel else nn.Identity()
        self.skip: nn.Module = nn.Identity()
        if cin != cout or stride != (1, 1, 1):
            self.skip = PointwiseConv3d(cin, cout, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _to_fast_layout(x)
        residual = self.body(x)
        if isinstance(self.qam, QuartetAttention):
            # skip + QAM(residual) in one pass: QAM(r) = r * (sum of its four maps / 4)
            return GatedResidual.apply(self.skip(x), residual, *self.qam.maps(residual))
        return self.skip(x) + residual


class VoxelAttention(nn.Module):
    """VAM: gate the decoder feature X_d with a map from X_e and X_d, upsample, concat with X_e.

    x_e (N, ce, D, H, W) at the finer level, x_d (N, cd, D/s, H/s, W/s) -> (N, 2 * ce, D, H, W).
    """

    def __init__(self, ce: int, cd: int, stride: Sequence[int]) -> None:
        super().__init__()
        stride = tuple(stride)
        self.pool = nn.MaxPool3d(stride, stride)
        self.proj_e = PointwiseConv3d(ce, cd)
        self.proj_d = PointwiseConv3d(cd, cd, bias=False)
        self.score = nn.Sequential(_gn(cd), _act(), PointwiseConv3d(cd, 1))
        self.up = PatchUpsample3d(cd, ce, stride)

    def attention(self, x_e: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """The voxel-wise map (N, 1, D/s, H/s, W/s) in (0, 1)."""
        return torch.sigmoid(self.score(self.proj_e(self.pool(x_e)) + self.proj_d(x_d)))

    def forward(self, x_e: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.up(x_d * self.attention(x_e, x_d)), x_e], dim=1)


class SkipConcat(nn.Module):
    """The plain U-Net skip: upsample X_d (transposed conv), concat with X_e (no attention)."""

    def __init__(self, ce: int, cd: int, stride: Sequence[int]) -> None:
        super().__init__()
        self.up = PatchUpsample3d(cd, ce, stride)

    def forward(self, x_e: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.up(x_d), x_e], dim=1)


def _check_strides(strides: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    strides = list(strides)
    if len(strides) != 4:
        raise UdasegError(f"strides needs 4 (d, h, w) triples, got {len(strides)}", exit_code=2)
    return tuple(as_int_tuple(s, 3, "stride") for s in strides)


class ResUNet3D(nn.Module):
    """3D residual U-Net with anisotropic strides and deep supervision; VAM/QAM optional.

    Input (N, in_channels, D, H, W) with D, H, W divisible by the product of the strides per axis
    (4, 16, 16 by default; a clear UdasegError otherwise). Output dict: "logits" (N, num_classes,
    D, H, W) from the fused primary head, "aux" = the five per-level heads (bottleneck first ...
    full resolution last, each (N, num_classes, D, H, W)), "features" = the bottleneck
    (N, channels[-1], D/4, H/16, W/16 by default).

    Args:
        in_channels: image channels (1).
        num_classes: classes including background.
        channels: widths of the five levels (16, 32, 64, 128, 256).
        strides: the four (d, h, w) downsampling strides ((1,2,2), (1,2,2), (2,2,2), (2,2,2)).
        qam_kernel: QAM conv size k (7); 0 or None disables QAM.
        vam: use VAM on the skip connections (True) or plain concatenation (False).
        deep_supervision: per-level heads fused into the primary head (True), or one head on the
            last decoder level and aux = [] (False).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Sequence[Sequence[int]] = DEFAULT_STRIDES,
        qam_kernel: int | None = 7,
        vam: bool = True,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        ch = as_int_tuple(channels, 5, "channels")
        self.strides = _check_strides(strides)
        self.encoder = self._build_encoder(in_channels, ch, qam_kernel)
        skip = VoxelAttention if vam else SkipConcat
        # decoder modules ordered deepest first, the order they run in
        self.skips = nn.ModuleList(
            skip(ch[i], ch[i + 1], self.strides[i]) for i in reversed(range(4))
        )
        self.decoder = nn.ModuleList(
            PreActBlock(2 * ch[i], ch[i], qam_kernel=qam_kernel) for i in reversed(range(4))
        )
        self.deep_supervision = deep_supervision
        n_heads = 5 if deep_supervision else 1
        self.heads = nn.ModuleList(
            PointwiseConv3d(c, num_classes) for c in list(reversed(ch))[-n_heads:]
        )
        self.fuse = PointwiseConv3d(5 * num_classes, num_classes) if deep_supervision else None

    def _build_encoder(self, cin: int, ch: tuple[int, ...], k: int | None) -> nn.ModuleList:
        first = nn.Sequential(
            Conv3x3x3(cin, ch[0], 3, padding=1), PreActBlock(ch[0], ch[0], qam_kernel=k)
        )
        rest = [PreActBlock(ch[i], ch[i + 1], self.strides[i], qam_kernel=k) for i in range(4)]
        return nn.ModuleList([first, *rest])

    def divisor(self) -> tuple[int, int, int]:
        """What D, H, W must be divisible by: the product of the strides per axis."""
        return tuple(math.prod(s[axis] for s in self.strides) for axis in range(3))

    def check_input(self, x: torch.Tensor) -> None:
        size, div = tuple(x.shape[2:]), self.divisor()
        if x.dim() != 5 or any(n % d for n, d in zip(size, div, strict=True)):
            raise UdasegError(
                f"3D U-Net input must be (N, C, D, H, W) with D, H, W divisible by {div}, "
                f"got shape {tuple(x.shape)}",
                hint=f"crop or pad patches to multiples of {div}, e.g. 32x256x256",
            )

    def forward(self, x: torch.Tensor) -> dict:
        self.check_input(x)
        levels = []
        h = x
        for level in self.encoder:
            h = level(h)
            levels.append(h)
        features = levels.pop()
        outs, h = [features], features
        for skip, block in zip(self.skips, self.decoder, strict=True):
            h = block(skip(levels.pop(), h))
            outs.append(h)
        return self._predict(outs, x.shape[2:], features.contiguous())

    def _predict(self, outs: list[torch.Tensor], size, features: torch.Tensor) -> dict:
        # outputs leave in the standard (contiguous) layout whatever the layout inside
        if not self.deep_supervision:
            logits = self.heads[0](outs[-1]).contiguous()
            return {"logits": logits, "aux": [], "features": features}
        aux = [
            resize_to(head(o).contiguous(), size) for head, o in zip(self.heads, outs, strict=True)
        ]
        return {"logits": self.fuse(torch.cat(aux, dim=1)), "aux": aux, "features": features}


@register_model(
    "dar-unet.v1",
    dims=3,
    hparams=DARUNET_HPARAMS,
    tiny=TINY_3D,
    description="DAR-UNet: 3D anisotropic residual U-Net with VAM, QAM and deep supervision",
)
class DARUNet(ResUNet3D):
    """DAR-UNet (VAM on skips, QAM in every residual block). See :class:`ResUNet3D` for the
    layouts and kwargs; ``vam`` is always on here."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Sequence[Sequence[int]] = DEFAULT_STRIDES,
        qam_kernel: int = 7,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__(
            in_channels, num_classes, channels, strides, qam_kernel, True, deep_supervision
        )


@register_model(
    "resunet3d.v1",
    dims=3,
    hparams=DARUNET_HPARAMS,
    tiny=TINY_3D,
    description="3D anisotropic residual U-Net: DAR-UNet without VAM and QAM (ablation baseline)",
)
class PlainResUNet3D(ResUNet3D):
    """DAR-UNet's ablation baseline: same network without VAM and QAM. Kwargs as
    :class:`ResUNet3D` minus ``qam_kernel`` and ``vam``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Sequence[Sequence[int]] = DEFAULT_STRIDES,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__(in_channels, num_classes, channels, strides, None, False, deep_supervision)
