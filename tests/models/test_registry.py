"""The segmentation networks: the forward contract of every registered model, the checkpoint
contract, and shape facts from the papers (SIFA's encoder, DeepLab-v2's ResNets, DAR-UNet's
anisotropic levels and QAM, BiGL's dual attention)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from udaseg.errors import UdasegError
from udaseg.models import create_model, list_models, model_spec
from udaseg.models.darunet import QAM_VIEWS, QuartetAttention, VoxelAttention
from udaseg.models.sifa import ResidualBlock
from udaseg.models.unet import DualAttention

NUM_CLASSES = 3
HPARAM_KEYS = {"optimizer", "lr", "weight_decay", "schedule", "loss", "aux_weight"}
HPARAM_KEYS |= {"batch_size", "patch_size", "steps"}


def tiny_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, in_channels=1, num_classes=NUM_CLASSES, **model_spec(name).tiny)


def tiny_input(name: str, seed: int = 1) -> torch.Tensor:
    shape = (2, 1, 32, 32) if model_spec(name).dims == 2 else (1, 1, 8, 32, 32)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def all_tensors(out: dict) -> list[torch.Tensor]:
    """Every tensor a forward returned: logits, aux heads, features and any extra maps."""
    tensors = [out["logits"], *out["aux"]]
    tensors += [v for k, v in out.items() if k not in ("logits", "aux") and torch.is_tensor(v)]
    return tensors


@pytest.mark.parametrize("name", list_models())
def test_forward_contract(name: str) -> None:
    x = tiny_input(name)
    out = tiny_model(name)(x)
    expected = (x.shape[0], NUM_CLASSES, *x.shape[2:])
    assert tuple(out["logits"].shape) == expected
    assert isinstance(out["aux"], list)
    assert all(tuple(a.shape) == expected for a in out["aux"])
    assert torch.is_tensor(out["features"]) and out["features"].shape[0] == x.shape[0]
    assert all(torch.isfinite(t).all() for t in all_tensors(out))


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_finite_gradient(name: str) -> None:
    model = tiny_model(name)
    out = model(tiny_input(name))
    sum(t.float().mean() for t in all_tensors(out)).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} is not reached by the forward"
        assert torch.isfinite(param.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", list_models())
def test_rebuilt_from_name_and_kwargs_gives_identical_output(name: str) -> None:
    model, x = tiny_model(name, seed=0), tiny_input(name)
    model(x)  # a training-mode pass moves the batch-norm running statistics off their defaults
    model.eval()
    # the checkpoint stores the kwargs as JSON: tuples come back as lists
    kwargs = json.loads(json.dumps(model_spec(name).tiny))
    torch.manual_seed(99)
    rebuilt = create_model(name, in_channels=1, num_classes=NUM_CLASSES, **kwargs)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    assert torch.equal(a["logits"], b["logits"])
    assert all(torch.equal(p, q) for p, q in zip(a["aux"], b["aux"], strict=True))


@pytest.mark.parametrize("name", list_models())
def test_hparams_is_complete(name: str) -> None:
    spec = model_spec(name)
    hparams = spec.hparams
    assert set(hparams) >= HPARAM_KEYS
    assert hparams["optimizer"] in ("adam", "adamw", "sgd")
    assert ("betas" in hparams) == (hparams["optimizer"] in ("adam", "adamw"))
    assert ("momentum" in hparams) == (hparams["optimizer"] == "sgd")
    assert hparams["schedule"] in ("constant", "cosine", "poly")
    assert ("poly_power" in hparams) == (hparams["schedule"] == "poly")
    assert hparams["loss"] in ("ce_dice", "dice_focal", "gdice_ce", "ce")
    assert len(hparams["patch_size"]) == spec.dims
    assert hparams["lr"] > 0 and hparams["batch_size"] > 0 and hparams["steps"] > 0


def test_unknown_model_name_suggests_the_closest() -> None:
    with pytest.raises(UdasegError, match="did you mean"):
        create_model("unet2d.v2")


# --- SIFA ----------------------------------------------------------------------------------------


def sifa_tokens(encoder: nn.Module) -> list[str]:
    """The encoder's layer sequence in the paper's notation (C16, R16, M, ...)."""
    tokens = []
    for layer in [*encoder.lower, *encoder.upper]:
        if isinstance(layer, nn.MaxPool2d):
            tokens.append("M")
        elif isinstance(layer, ResidualBlock):
            dilated = layer.conv1[0].dilation == (2, 2)
            tokens.append(f"{'D' if dilated else 'R'}{layer.conv2[0].out_channels}")
        else:
            tokens.append(f"C{layer[0].out_channels}")
    return tokens


def test_sifa_encoder_follows_the_paper_layout() -> None:
    model = create_model("sifa-encoder.v1", in_channels=1, num_classes=5)
    expected = (
        "C16 R16 M R32 M R64 R64 M R128 R128 R256 R256 R256 R256 R512 R512 D512 D512 C512 C512"
    )
    assert " ".join(sifa_tokens(model.encoder)) == expected
    convs3 = [
        m for m in model.encoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(convs3) == 31  # 1 + 2 * 14 residual blocks + 2
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == len(convs)  # every conv (incl. 1x1 projections) has its batch norm
    out = model(torch.randn(1, 1, 64, 64))
    assert tuple(out["features"].shape) == (1, 512, 8, 8)  # three max-pools: stride 8
    assert tuple(out["logits"].shape) == tuple(out["aux"][0].shape) == (1, 5, 64, 64)


def test_sifa_c2_reads_the_r512_block() -> None:
    model = tiny_model("sifa-encoder.v1")
    seen = {}
    model.encoder.lower.register_forward_hook(lambda m, i, o: seen.setdefault("r512", o))
    model.aux_classifier.register_forward_hook(lambda m, i, o: seen.setdefault("c2_in", i[0]))
    model(tiny_input("sifa-encoder.v1"))
    assert seen["c2_in"] is seen["r512"]


# --- DeepLab-v2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("depth", "blocks"), [(50, [3, 4, 6, 3]), (101, [3, 4, 23, 3])])
def test_deeplab_depth_sets_block_counts(depth: int, blocks: list[int]) -> None:
    model = create_model("deeplabv2.v1", depth=depth, width=8)
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(layer) for layer in layers] == blocks
    assert tuple(model.layer3[0].body[3].dilation) == (2, 2)
    assert tuple(model.layer4[-1].body[3].dilation) == (4, 4)
    assert [b.dilation for b in model.classifier.branches] == [(d, d) for d in (6, 12, 18, 24)]
    assert (
        model.classifier.branches[0].in_channels == 2 * model.aux_classifier.branches[0].in_channels
    )


def test_deeplab_output_stride_is_8_and_bad_depth_raises() -> None:
    out = tiny_model("deeplabv2.v1")(torch.randn(2, 1, 64, 64))
    assert tuple(out["features"].shape[2:]) == (8, 8)
    with pytest.raises(UdasegError, match="50 or 101"):
        create_model("deeplabv2.v1", depth=34)


# --- DAR-UNet ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dar-unet.v1", "resunet3d.v1"])
def test_darunet_levels_for_a_32x256x256_patch(name: str) -> None:
    # shapes only: the meta device runs the forward without computing anything
    model = tiny_model(name).to("meta")
    shapes: list[tuple[int, ...]] = []
    for level in model.encoder:
        level.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[2:])))
    out = model(torch.empty(1, 1, 32, 256, 256, device="meta"))
    assert shapes == [(32, 256, 256), (32, 128, 128), (32, 64, 64), (16, 32, 32), (8, 16, 16)]
    assert len(out["aux"]) == 5
    assert all(tuple(t.shape) == (1, NUM_CLASSES, 32, 256, 256) for t in all_tensors(out)[:6])


def test_darunet_rejects_indivisible_input() -> None:
    model = tiny_model("dar-unet.v1")
    with pytest.raises(UdasegError, match="divisible by \\(4, 16, 16\\)"):
        model(torch.randn(1, 1, 6, 32, 32))


def test_darunet_has_vam_and_qam_and_the_baseline_has_neither() -> None:
    dar, base = tiny_model("dar-unet.v1"), tiny_model("resunet3d.v1")
    blocks = [m for m in dar.modules() if type(m).__name__ == "PreActBlock"]
    assert len(blocks) == 9  # five encoder levels + four decoder levels
    assert all(isinstance(b.qam, QuartetAttention) for b in blocks)
    assert sum(isinstance(m, VoxelAttention) for m in dar.modules()) == 4
    assert not any(isinstance(m, (QuartetAttention, VoxelAttention)) for m in base.modules())


def test_qam_averages_four_branches_over_the_four_views() -> None:
    torch.manual_seed(0)
    qam = QuartetAttention(kernel=3)
    x = torch.randn(2, 3, 4, 5, 6)  # distinct C, D, H, W to tell the views apart
    pooled: list[tuple[int, ...]] = []
    for branch in qam.branches:
        branch.conv.register_forward_hook(lambda m, i, o: pooled.append(tuple(i[0].shape[1:])))
    out = qam(x)
    assert pooled == [(2, 4, 5, 6), (2, 3, 5, 6), (2, 3, 4, 6), (2, 3, 4, 5)]
    assert list(QAM_VIEWS) == ["dhw", "chw", "cdw", "cdh"]
    assert torch.allclose(out, sum(b(x) for b in qam.branches) / 4)
    for branch in qam.branches:  # zero convs: every gate is sigmoid(0) = 1/2
        nn.init.zeros_(branch.conv.weight)
        nn.init.zeros_(branch.conv.bias)
    assert torch.allclose(qam(x), 0.5 * x)


def test_darunet_without_deep_supervision() -> None:
    model = create_model(
        "dar-unet.v1", num_classes=2, channels=[4, 8, 8, 8, 8], deep_supervision=False
    )
    out = model(torch.randn(1, 1, 4, 16, 16))
    assert out["aux"] == [] and tuple(out["logits"].shape) == (1, 2, 4, 16, 16)


# --- U-Nets --------------------------------------------------------------------------------------


def test_dual_attention_starts_as_identity_and_returns_attention_maps() -> None:
    model = tiny_model("dual-attention-unet.v1")
    attention = model.attention
    assert isinstance(attention, DualAttention)
    assert attention.position.gamma.item() == 0 and attention.channel.gamma.item() == 0
    seen = {}
    attention.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o[0]))
    x = tiny_input("dual-attention-unet.v1")
    out = model(x)
    assert torch.equal(seen["x"], out["features"])  # gamma = 0: the block is the identity
    n, c, h, w = out["features"].shape
    assert tuple(out["position_attention"].shape) == (n, h * w, h * w)
    assert tuple(out["channel_attention"].shape) == (n, c, c)
    ones = torch.ones(n, h * w)
    assert torch.allclose(out["position_attention"].sum(-1), ones, atol=1e-5)
    with torch.no_grad():
        attention.position.gamma.fill_(1.0)
    assert not torch.allclose(model(x)["features"], seen["x"])


@pytest.mark.parametrize("kwargs", [{"norm": "instance", "up": "bilinear"}, {}])
def test_unet_handles_any_input_size(kwargs: dict) -> None:
    model = create_model("unet2d.v1", num_classes=4, base_channels=4, depth=3, **kwargs)
    out = model(torch.randn(2, 1, 30, 45))
    assert tuple(out["logits"].shape) == (2, 4, 30, 45) and out["aux"] == []
    assert tuple(out["features"].shape) == (2, 32, 4, 6)
