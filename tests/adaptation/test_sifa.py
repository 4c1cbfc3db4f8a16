"""sifa.v1: every network learns from its own objective, in the paper's order, reproducibly.

Tiny networks on 32x32 random batches; the method module is imported directly (not through the
registry's loader) and built by calling its builder.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from udaseg.adaptation import registry, sifa
from udaseg.adaptation.base import AdaptBatch, AdaptContext
from udaseg.errors import UdasegError
from udaseg.models.registry import create_model
from udaseg.training.loop import Runtime

MODEL_KWARGS = {"in_channels": 1, "num_classes": 3, "base_channels": 2}
TINY = {
    "g_width": 2,
    "g_blocks": 1,
    "u_width": 2,
    "d_width": 2,
    "pool_size": 3,
    "patch_size": [32, 32],
    "batch_size": 2,
    "steps": 10,
}
NETWORKS = ("model", "g_t", "decoder", "d_t", "d_s", "d_p1", "d_p2")


def build(**overrides):
    """sifa.v1 with tiny networks, initialised from seed 0."""
    hparams = {**registry.COMMON_DEFAULTS, **sifa.SIFA_ADAPT_HPARAMS, **TINY, **overrides}
    context = AdaptContext(
        model="sifa-encoder.v1",
        model_kwargs=dict(MODEL_KWARGS),
        num_classes=3,
        hparams=hparams,
        runtime=Runtime(device="cpu"),
        generator=torch.Generator().manual_seed(0),
    )
    torch.manual_seed(0)
    return sifa.sifa(context)


def make_batch(seed: int = 1) -> AdaptBatch:
    g = torch.Generator().manual_seed(seed)
    return AdaptBatch(
        source=torch.rand(2, 1, 32, 32, generator=g) * 2 - 1,
        labels=torch.randint(0, 3, (2, 32, 32), generator=g),
        target=torch.rand(2, 1, 32, 32, generator=g) * 2 - 1,
    )


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[n], p) for n, p in module.named_parameters())


def test_registered_for_the_sifa_segmenter_with_the_paper_weights():
    spec = registry._REGISTRY["sifa.v1"]  # no loader: the other methods may not exist yet
    assert spec.models == ("sifa-encoder.v1",)
    assert spec.source_translator is None  # SIFA translates online with its own G_t
    hparams = spec.hparams
    weights = [
        hparams[f"lambda_{k}"] for k in ("adv_s", "cycle", "adv_p1", "adv_p2", "adv_s_tilde")
    ]
    assert weights == [0.1, 10.0, 0.1, 0.01, 0.1]
    assert (hparams["aux_weight"], hparams["lambda_adv_t"], hparams["loss"]) == (
        0.1,
        1.0,
        "ce_dice",
    )
    assert (hparams["lr"], hparams["batch_size"], hparams["pool_size"]) == (2e-4, 8, 50)


def test_step_returns_every_loss_finite():
    losses = build().train_step(make_batch())
    expected = {
        "total",
        "adv_t",
        "adv_s",
        "adv_s_tilde",
        "cycle_s",
        "cycle_t",
        "seg1",
        "seg2",
        "adv_p1",
        "adv_p2",
        "g_t_objective",
        "decoder_objective",
        "d_t",
        "d_s",
        "d_s_aux",
        "d_p1",
        "d_p2",
    }
    assert expected <= set(losses)
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses.values())


def test_every_network_learns_in_one_step():
    method = build()
    segmenter = method.modules["model"]
    parts = {name: method.modules[name] for name in NETWORKS}
    parts |= {
        "E": segmenter.encoder,
        "C1": segmenter.classifier,
        "C2": segmenter.aux_classifier,
    }
    before = {name: parameters(module) for name, module in parts.items()}
    method.train_step(make_batch())
    frozen = [name for name, module in parts.items() if not changed(before[name], module)]
    assert frozen == []


def test_segmentation_and_feature_alignment_never_train_the_generator():
    # Eq. (6): G_t appears only in adv_t and the cycle loss; with both off, the segmentation and
    # prediction/image-space adversarial losses (still on) must leave G_t untouched
    method = build(lambda_adv_t=0.0, lambda_cycle=0.0)
    g_t, encoder = method.modules["g_t"], method.modules["model"].encoder
    g_before, e_before = parameters(g_t), parameters(encoder)
    method.train_step(make_batch())
    assert changed(e_before, encoder)
    assert not changed(g_before, g_t)
    assert all(p.grad is None or not p.grad.any() for p in g_t.parameters())


def test_auxiliary_adversarial_term_trains_only_the_encoder():
    # Eq. (5) is L(E, D_s): with adv_s and the cycle loss off, adv_s~ (still on) flows through U
    # into E but must not train U itself
    method = build(lambda_adv_s=0.0, lambda_cycle=0.0)
    decoder = method.modules["decoder"]
    before = parameters(decoder)
    losses = method.train_step(make_batch())
    assert losses["adv_s_tilde"] > 0
    assert not changed(before, decoder)


def test_optimisers_step_in_the_paper_order():
    method = build()
    calls: list[str] = []

    def recording(name, step):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return step(*args, **kwargs)

        return wrapped

    for name, opt in method.optimizers.items():
        opt.step = recording(name, opt.step)
    method.train_step(make_batch())
    assert calls == ["g_t", "d_t", "encoder", "classifiers", "decoder", "d_s", "d_p1", "d_p2"]


def run(method, steps: int) -> list[dict[str, float]]:
    return [method.train_step(make_batch(seed)) for seed in range(steps)]


def assert_same_state(a, b) -> None:
    for name in a.modules:
        left, right = a.modules[name].state_dict(), b.modules[name].state_dict()
        assert all(torch.equal(left[k], right[k]) for k in left), name


def test_same_seed_same_run():
    first = build()
    first_losses = run(first, 5)  # 10 images through pools of 3: random swaps included
    second = build()
    assert run(second, 5) == first_losses
    assert_same_state(first, second)


def test_resume_from_saved_state_is_exact():
    # what the shared loop checkpoints: every module (pools included), optimiser and the RNG
    uninterrupted = build()
    run(uninterrupted, 2)
    # copies, as a checkpoint file holds: state_dict() returns the live tensors
    modules = copy.deepcopy({k: m.state_dict() for k, m in uninterrupted.modules.items()})
    optimizers = copy.deepcopy({k: o.state_dict() for k, o in uninterrupted.optimizers.items()})
    rng = torch.get_rng_state()
    expected = [uninterrupted.train_step(make_batch(seed)) for seed in (7, 8)]

    resumed = build()
    for name, state in modules.items():
        resumed.modules[name].load_state_dict(state)
    for name, state in optimizers.items():
        resumed.optimizers[name].load_state_dict(state)
    torch.set_rng_state(rng)
    assert [resumed.train_step(make_batch(seed)) for seed in (7, 8)] == expected
    assert int(resumed.modules["pool_t"].count) == 3


def test_extras_write_the_sample_grid(tmp_path):
    method = build()
    method.train_step(make_batch())
    method.extras(tmp_path, make_batch())
    assert (tmp_path / "sifa_samples.png").stat().st_size > 0
    assert all(module.training for module in method.modules.values())


def test_model_is_a_plain_sifa_segmenter_for_predict():
    method = build()
    method.train_step(make_batch())
    segmenter = create_model("sifa-encoder.v1", **MODEL_KWARGS)
    segmenter.load_state_dict(method.modules["model"].state_dict())
    out = segmenter.eval()(make_batch().target)
    assert out["logits"].shape == (2, 3, 32, 32)


def test_patch_size_must_suit_the_encoder_stride():
    with pytest.raises(UdasegError, match="divisible by 8"):
        build(patch_size=[36, 36])
