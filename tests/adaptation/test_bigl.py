"""bigl.v1: its losses, which images each discriminator compares, what each update reaches,
determinism, and its pictures, on a tiny dual-attention U-Net and 32x32 slices."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from udaseg.adaptation import bigl
from udaseg.adaptation.base import AdaptBatch, AdaptContext, AdaptMethod
from udaseg.adaptation.registry import COMMON_DEFAULTS
from udaseg.errors import UdasegError
from udaseg.losses.gan import gan_loss
from udaseg.training.loop import Runtime

TINY_MODEL = {"in_channels": 1, "num_classes": 3, "base_channels": 4, "depth": 3}
TINY_HPARAMS = {"steps": 20, "batch_size": 2, "patch_size": [32, 32], "d_width": 4}
DISCRIMINATORS = [f"d_{rep}_{domain}" for rep in ("feat", "pos", "cha") for domain in "st"]
SEGMENTER_TERMS = ["seg_source", "seg_translated", "consistency", "adv_feat", "adv_pos", "adv_cha"]
LOG4 = math.log(4.0)  # BCE of a discriminator that cannot tell real from fake, at its best


class StandIn(nn.Module):
    """A frozen translator: source -> target by ``forward``, target -> source by ``back``."""

    def __init__(self, forward=lambda x: -x, back=lambda x: -x) -> None:
        super().__init__()
        self._forward, self._back = forward, back

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def translate_back(self, x: torch.Tensor) -> torch.Tensor:
        return self._back(x)


pytestmark = pytest.mark.usefixtures("one_thread")


def build(translator: nn.Module | None = None, seed: int = 0, **hparams) -> AdaptMethod:
    torch.manual_seed(seed)  # the networks' initial weights
    ctx = AdaptContext(
        model="dual-attention-unet.v1",
        model_kwargs=dict(TINY_MODEL),
        num_classes=3,
        hparams=COMMON_DEFAULTS | bigl.BIGL_ADAPT_HPARAMS | TINY_HPARAMS | hparams,
        # float32: losses are compared with ones recomputed outside autocast
        runtime=Runtime(device="cpu", amp=False),
        generator=torch.Generator().manual_seed(seed),
        translator=StandIn() if translator is None else translator,
    )
    return bigl.bigl(ctx)


def batch(seed: int = 0, n: int = 2, size: int = 32) -> AdaptBatch:
    """Source slices with two square 'organs' (classes 1, 2), unlabelled target noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, 4:14, 4:14] = 1
    labels[:, 18:28, 16:30] = 2
    source = labels[:, None].float() + 0.3 * torch.randn(n, 1, size, size, generator=g)
    target = torch.randn(n, 1, size, size, generator=g)
    return AdaptBatch(source, labels, target)


def parameters(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_step_logs_every_term_and_total_is_eq_10():
    losses = build().train_step(batch())
    assert set(losses) == {"total", *SEGMENTER_TERMS, *DISCRIMINATORS}
    assert all(math.isfinite(v) for v in losses.values())
    expected = (
        losses["seg_source"]
        + losses["seg_translated"]
        + 1e-3 * losses["consistency"]
        + 0.1 * (losses["adv_feat"] + losses["adv_pos"] + losses["adv_cha"])
    )
    assert losses["total"] == pytest.approx(expected, rel=1e-5)


def test_consistency_compares_target_with_its_translation_back():
    # translate_back = identity: x_t->s is x_t, the same model gives the same prediction
    same = build(StandIn(back=lambda x: x)).train_step(batch())
    assert same["consistency"] == 0.0
    inverted = build(StandIn(back=lambda x: -x)).train_step(batch())
    assert inverted["consistency"] > 1e-6


def test_the_translator_gets_the_source_before_intensity_re_rendering():
    plain = batch()
    seen = []
    translator = StandIn(forward=lambda x: seen.append(x) or -x)
    rerendered = AdaptBatch(-plain.source, plain.labels, plain.target, plain.source)
    images = bigl.translate_both(translator, rerendered)
    assert torch.equal(seen[0], plain.source)  # what the translator was trained on
    assert torch.equal(images["source"], -plain.source)  # what the segmenter trains on


def test_segmenter_and_every_discriminator_update():
    method = build()
    before = {name: parameters(module) for name, module in method.modules.items()}
    method.train_step(batch())
    assert set(method.modules) == {"model", *DISCRIMINATORS}
    for name, module in method.modules.items():
        assert changed(before[name], module), f"{name} did not update"


@pytest.mark.parametrize("lambda_gtl, moves", [(0.0, False), (0.1, True)])
def test_attention_alignment_reaches_position_attention(lambda_gtl, moves):
    # gamma starts at 0, so segmentation and consistency give the query no gradient: only the
    # adversarial alignment of the position attention maps can move it (no weight decay here)
    method = build(lambda_gtl=lambda_gtl, weight_decay=0.0)
    query = method.modules["model"].attention.position.query.weight
    before = query.detach().clone()
    method.train_step(batch())
    assert (not torch.equal(before, query)) is moves


def test_discriminators_compare_labelled_and_unlabelled_images_of_one_domain():
    # x_s = x_s->t = x_t, and x_t->s = -x_s: D_t (x_s->t vs x_t) sees the same maps as real and
    # fake and can never beat log 4; D_s (x_s vs x_t->s) can tell them apart and learns to
    data = batch()
    data.target = data.source.clone()
    method = build(StandIn(forward=lambda x: x, back=lambda x: -x), lambda_gtl=0.0, d_lr=1e-2)
    for _ in range(12):
        losses = method.train_step(data)
        for rep in ("feat", "pos", "cha"):
            assert losses[f"d_{rep}_t"] >= LOG4 - 1e-5
    for rep in ("feat", "pos", "cha"):
        assert losses[f"d_{rep}_s"] < LOG4 - 0.1, rep


def test_segmenter_makes_unlabelled_images_pass_as_labelled():
    # Eqs. (6), (8): x_t->s is scored "real" by D_s and x_t "real" by D_t, before any update
    method, data = build(), batch()
    initial = {name: copy.deepcopy(module) for name, module in method.modules.items()}
    expected = {}
    with torch.no_grad():
        reps = {
            name: bigl.representations(initial["model"](x))
            for name, x in (("target_to_source", -data.target), ("target", data.target))
        }
        for rep in ("feat", "pos", "cha"):
            d_s, d_t = initial[f"d_{rep}_s"], initial[f"d_{rep}_t"]
            expected[rep] = float(
                gan_loss(d_s(reps["target_to_source"][rep]), True, "bce")
                + gan_loss(d_t(reps["target"][rep]), True, "bce")
            )
    losses = method.train_step(data)
    for rep, value in expected.items():
        assert losses[f"adv_{rep}"] == pytest.approx(value, rel=1e-5), rep


def test_same_seed_same_run():
    runs = []
    for _ in range(2):
        method = build(seed=3)
        losses = [method.train_step(batch(seed=i)) for i in range(3)]
        runs.append((losses, method.modules["model"].state_dict()))
    (losses_a, state_a), (losses_b, state_b) = runs
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    other = build(seed=4).train_step(batch(seed=0))
    assert other != losses_a[0]


def test_refuses_a_missing_translator():
    ctx = AdaptContext(
        "dual-attention-unet.v1",
        dict(TINY_MODEL),
        3,
        COMMON_DEFAULTS | bigl.BIGL_ADAPT_HPARAMS | TINY_HPARAMS,
        Runtime(device="cpu"),
        torch.Generator(),
    )
    with pytest.raises(UdasegError, match="translator"):
        bigl.bigl(ctx)


def test_trains_with_a_real_translator():
    from udaseg.translation.cyclegan import CycleGAN

    torch.manual_seed(0)
    translator = CycleGAN(width=4, blocks=1, disc_width=4).eval().requires_grad_(False)
    losses = build(translator).train_step(batch())
    assert all(math.isfinite(v) for v in losses.values())
    assert all(p.grad is None for p in translator.parameters())


def test_extras_draw_the_four_images_and_predictions(tmp_path):
    build().extras(tmp_path, batch())
    for name in ("images.png", "predictions.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_rates_follow_sec_3_6():
    method = build()
    for _ in range(10):
        for opt in method.optimizers.values():
            opt.step()
        for sched in method.schedulers.values():
            sched.step()
    assert method.optimizers["model"].param_groups[0]["lr"] == pytest.approx(
        5e-3 * (1 - 10 / 20) ** 0.75
    )
    for name in DISCRIMINATORS:
        assert method.optimizers[name].param_groups[0]["lr"] == pytest.approx(5e-5)


def test_refuses_a_one_way_translator_and_takes_a_two_way_cut():
    from udaseg.translation.registry import create_translator, translator_spec

    tiny = translator_spec("cut.v1").tiny
    one_way = create_translator("cut.v1", **tiny).eval().requires_grad_(False)
    with pytest.raises(UdasegError, match="bidirectional=true"):
        build(one_way)
    two_way = create_translator("cut.v1", **tiny, bidirectional=True).eval()
    losses = build(two_way.requires_grad_(False)).train_step(batch())
    assert all(math.isfinite(v) for v in losses.values())
