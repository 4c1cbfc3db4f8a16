"""cyclegan.v1 and attention-cyclegan.v1: contract, update order, exact resume, toy translation."""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch

from udaseg.errors import UdasegError
from udaseg.translation import registry
from udaseg.translation.cyclegan import (
    AttentionGate,
    AttentionUNetGenerator,
    CycleTranslator,
    ImagePool,
    ResnetGenerator,
)

METHODS = ["cyclegan.v1", "attention-cyclegan.v1"]
HPARAM_KEYS = {
    "lr_g",
    "lr_d",
    "betas",
    "batch_size",
    "patch_size",
    "steps",
    "schedule",
    "lambda_cycle",
    "lambda_identity",
    "pool_size",
}
STEP_KEYS = {"g_adv_t", "g_adv_s", "cycle_s", "cycle_t", "d_t", "d_s", "total"}
no_autocast = contextlib.nullcontext


pytestmark = pytest.mark.usefixtures("one_thread")


def checkpoint(model: torch.nn.Module, opts: dict) -> io.BytesIO:
    """What a translate-train checkpoint holds for resuming: weights (pools included), optimiser
    states and torch's RNG, saved to memory and rewound for reading."""
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in opts.items()},
            "rng": torch.get_rng_state(),
        },
        buffer,
    )
    buffer.seek(0)
    return buffer


def restore_training(fresh: torch.nn.Module, hparams: dict, saved: dict) -> dict:
    """Fresh optimisers of ``fresh`` (already holding the saved weights) with the saved states,
    and torch's RNG as it was; returns the optimisers."""
    opts = fresh.optimizers(hparams)
    for key, state in saved["optimizers"].items():
        opts[key].load_state_dict(state)
    torch.set_rng_state(saved["rng"])
    return opts


def spec(name: str) -> registry.TranslatorSpec:
    # importing udaseg.translation.cyclegan registered it; read the registry directly so these
    # tests do not depend on the other built-in translator modules
    return registry._REGISTRY[name]


def tiny(name: str, seed: int = 0, **kwargs) -> CycleTranslator:
    torch.manual_seed(seed)
    return spec(name).builder(**{**spec(name).tiny, **kwargs})


def batch(seed: int, n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=gen) * 2 - 1, torch.rand(
        n, 1, size, size, generator=gen
    ) * 2 - 1


def snapshot(modules) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def changed(before: list[torch.Tensor], modules) -> bool:
    after = snapshot(modules)
    return all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("name", METHODS)
def test_registered_with_hparams(name):
    entry = spec(name)
    assert not entry.has_style_codes
    assert set(entry.hparams) == HPARAM_KEYS
    assert entry.hparams["schedule"] == "constant"
    assert entry.hparams["lambda_cycle"] == 10.0 and entry.hparams["pool_size"] == 50
    assert entry.hparams["batch_size"] == 1 and entry.hparams["patch_size"] == [256, 256]


def test_hparams_follow_the_papers():
    assert spec("cyclegan.v1").hparams["lr_g"] == 2e-4  # SIFA
    assert spec("cyclegan.v1").hparams["steps"] == 20000
    assert spec("attention-cyclegan.v1").hparams["lr_g"] == 1e-3  # AttENT Sec. IV-A.3
    assert spec("attention-cyclegan.v1").hparams["steps"] == 10000


@pytest.mark.parametrize("name", METHODS)
def test_optimizers_read_hparams(name):
    model = tiny(name)
    hparams = {**spec(name).hparams, "lr_g": 1e-3, "lr_d": 3e-4, "betas": [0.4, 0.9]}
    opts = model.optimizers(hparams)
    assert set(opts) == {"generator", "discriminator"}
    assert opts["generator"].param_groups[0]["lr"] == 1e-3
    assert opts["discriminator"].param_groups[0]["lr"] == 3e-4
    assert opts["generator"].param_groups[0]["betas"] == (0.4, 0.9)
    g_params = {id(p) for p in opts["generator"].param_groups[0]["params"]}
    assert g_params == {id(p) for m in model.generators for p in m.parameters()}


@pytest.mark.parametrize("name", METHODS)
def test_train_step_updates_everything(name):
    model = tiny(name)
    opts = model.optimizers(spec(name).hparams)
    g_before, d_before = snapshot(model.generators), snapshot(model.discriminators)
    out = model.train_step(*batch(1), opts, no_autocast)
    assert set(out) == STEP_KEYS
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in out.values())
    assert changed(g_before, model.generators)
    assert changed(d_before, model.discriminators)


def test_identity_term_reported_and_weighted():
    model = tiny("cyclegan.v1", lambda_identity=5.0)
    source, target = batch(2)
    losses, _, _ = model.generator_losses(source, target, no_autocast)
    expected = (
        losses["g_adv_t"]
        + losses["g_adv_s"]
        + 10.0 * (losses["cycle_s"] + losses["cycle_t"])
        + 5.0 * losses["identity"]
    )
    torch.testing.assert_close(losses["total"], expected)
    out = model.train_step(
        source, target, model.optimizers(spec("cyclegan.v1").hparams), no_autocast
    )
    assert set(out) == STEP_KEYS | {"identity"}


# --- opt-in semantic consistency (CyCADA) --------------------------------------------------


def tiny_segmenter(seed: int = 3, classes: int = 2) -> torch.nn.Module:
    from udaseg.models.registry import create_model, model_spec

    torch.manual_seed(seed)
    kwargs = {**model_spec("unet2d.v1").tiny, "in_channels": 1, "num_classes": classes}
    return create_model("unet2d.v1", **kwargs)


def anatomy_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source, its label (the bright half of each slice: anatomy the image shows) and target."""
    source, target = batch(seed)
    return source, (source[:, 0] > 0).long(), target


def test_semantic_term_is_weighted_and_its_segmenter_stays_frozen_outside_the_state():
    model = tiny("attention-cyclegan.v1", lambda_semantic=2.0)
    assert model.needs_source_labels and not tiny("cyclegan.v1").needs_source_labels
    segmenter = tiny_segmenter()
    model.use_semantic_model(segmenter)
    frozen = snapshot([segmenter])
    source, labels, target = anatomy_batch(4)
    losses, _, _ = model.generator_losses(source, target, no_autocast, labels)
    expected = (
        losses["g_adv_t"]
        + losses["g_adv_s"]
        + 10.0 * (losses["cycle_s"] + losses["cycle_t"])
        + 2.0 * (losses["semantic_s"] + losses["semantic_t"])
    )
    torch.testing.assert_close(losses["total"], expected)
    model.train()  # the translator's mode never reaches the attached segmenter
    opts = model.optimizers(spec("attention-cyclegan.v1").hparams)
    out = model.train_step(source, target, opts, no_autocast, source_labels=labels)
    assert set(out) == STEP_KEYS | {"semantic_s", "semantic_t"}
    assert not segmenter.training
    assert all(torch.equal(a, b) for a, b in zip(frozen, snapshot([segmenter]), strict=True))
    # checkpoints hold the translator only: translate apply needs no segmenter
    assert not any("semantic" in key for key in model.state_dict())


def test_semantic_term_refuses_without_its_segmenter_or_the_labels():
    model = tiny("cyclegan.v1", lambda_semantic=1.0)
    source, labels, target = anatomy_batch(5)
    opts = model.optimizers(spec("cyclegan.v1").hparams)
    with pytest.raises(UdasegError, match="no frozen segmenter"):
        model.train_step(source, target, opts, no_autocast, source_labels=labels)
    model.use_semantic_model(tiny_segmenter())
    with pytest.raises(UdasegError, match="no source labels"):
        model.train_step(source, target, opts, no_autocast)


class InvertedReader(torch.nn.Module):
    """A fixed segmenter that reads class 1 where the image is dark: the label (bright in the
    source) only reads right once G_st inverts the contrast, as CT -> MR must for some organs."""

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": torch.cat([4 * x, -4 * x], dim=1)}


def test_semantic_term_makes_the_segmenter_read_the_translation_as_the_label():
    """The same start and batches with and without the term: with it, the frozen segmenter's
    cross-entropy on G_st(s) against the source label ends far lower (the term does its job)."""

    def final_semantic_error(weight: float) -> float:
        model = tiny("attention-cyclegan.v1", seed=1, lambda_cycle=1.0, lambda_semantic=weight)
        model.use_semantic_model(InvertedReader())
        opts = model.optimizers(spec("attention-cyclegan.v1").hparams)
        torch.manual_seed(0)
        for step in range(60):
            source, labels, target = anatomy_batch(step % 3)
            model.train_step(source, target, opts, no_autocast, source_labels=labels)
        source, labels, _ = anatomy_batch(0)
        with torch.no_grad():
            logits = InvertedReader()(model.translate(source))["logits"]
        return float(torch.nn.functional.cross_entropy(logits, labels))

    without, with_term = final_semantic_error(0.0), final_semantic_error(5.0)
    assert with_term < 0.7 * without, (with_term, without)


@pytest.mark.parametrize("name", METHODS)
def test_translate_shapes_and_range(name):
    model = tiny(name)
    source, target = batch(3, n=3)
    with torch.no_grad():
        for out in (model.translate(source), model.translate_back(target)):
            assert out.shape == (3, 1, 32, 32)
            assert out.min() >= -1 and out.max() <= 1
    panels = model.samples(source, target)
    assert set(panels) >= {
        "source",
        "translated",
        "reconstructed",
        "target",
        "target_translated",
        "target_reconstructed",
    }
    for panel in panels.values():
        assert panel.shape == (3, 1, 32, 32) and panel.device.type == "cpu"
        assert not panel.requires_grad
    torch.testing.assert_close(panels["translated"], model.translate(source).detach())
    with pytest.raises(UdasegError):
        model.encode_style(target)


@pytest.mark.parametrize("name", METHODS)
def test_discriminators_frozen_during_generator_update(name):
    model = tiny(name)
    opts = model.optimizers(spec(name).hparams)
    model.update_generators(*batch(4), opts["generator"], no_autocast)
    assert all(p.grad is None for m in model.discriminators for p in m.parameters())
    assert all(p.grad is not None for m in model.generators for p in m.parameters())
    # frozen only for the generator update
    assert all(p.requires_grad for m in model.discriminators for p in m.parameters())


def _generator_grads(model: CycleTranslator, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for m in model.generators for p in m.parameters()]
    return list(torch.autograd.grad(loss, params, retain_graph=True))


@pytest.mark.parametrize("name", METHODS)
def test_cycle_weight_zero_removes_cycle_gradients(name):
    source, target = batch(5)
    for weight, same in ((0.0, True), (10.0, False)):
        model = tiny(name, lambda_cycle=weight)
        losses, _, _ = model.generator_losses(source, target, no_autocast)
        total = _generator_grads(model, losses["total"])
        adversarial = _generator_grads(model, losses["g_adv_t"] + losses["g_adv_s"])
        matches = all(
            torch.allclose(a, b, atol=1e-7) for a, b in zip(total, adversarial, strict=True)
        )
        assert matches == same
        assert losses["cycle_s"] > 0  # still computed and reported


@pytest.mark.parametrize("name", METHODS)
def test_resume_is_exact(name):
    """3 steps, checkpoint (weights, pools, optimisers, torch RNG), 2 steps; a fresh model loaded
    from the checkpoint repeats the 2 steps bit for bit. A 4-image pool is full after 2 steps,
    so the random pool swaps happen after the checkpoint."""
    batches = [batch(10 + i) for i in range(5)]
    model = tiny(name, pool_size=4)
    opts = model.optimizers(spec(name).hparams)
    for source, target in batches[:3]:
        model.train_step(source, target, opts, no_autocast)
    buffer = checkpoint(model, opts)
    for source, target in batches[3:]:
        model.train_step(source, target, opts, no_autocast)

    saved = torch.load(buffer, weights_only=True)
    assert {"pool_t.images", "pool_t.count", "pool_s.images", "pool_s.count"} <= set(saved["model"])
    assert saved["model"]["pool_t.images"].shape == (4, 1, 32, 32)
    fresh = tiny(name, seed=123, pool_size=4)
    fresh.load_state_dict(saved["model"])
    for key, value in saved["model"].items():
        assert torch.equal(fresh.state_dict()[key], value), key
    fresh_opts = restore_training(fresh, spec(name).hparams, saved)
    for source, target in batches[3:]:
        fresh.train_step(source, target, fresh_opts, no_autocast)

    expected, got = model.state_dict(), fresh.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_image_pool_history():
    torch.manual_seed(0)
    pool = ImagePool(size=3)
    first = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    torch.testing.assert_close(pool.query(first), first)  # filling: returned unchanged
    assert int(pool.count) == 3 and pool.images.shape == (3, 1, 2, 2)
    seen = set()
    for step in range(20):
        new = torch.full((1, 1, 2, 2), 10.0 + step)
        out = pool.query(new)
        seen.add("old" if float(out[0, 0, 0, 0]) != 10.0 + step else "new")
        assert (pool.images == new[0]).all(dim=(1, 2, 3)).sum() <= 1
    assert seen == {"old", "new"}  # both branches of the 50 % choice were taken
    with pytest.raises(UdasegError):
        pool.query(torch.zeros(1, 1, 4, 4))  # the spatial size is fixed at first use


def test_image_pool_loads_into_fresh_pool():
    pool = ImagePool(size=2)
    pool.query(torch.rand(3, 1, 5, 6))
    fresh = ImagePool(size=2)
    assert fresh.images.shape == (2, 1, 0, 0)
    fresh.load_state_dict(copy.deepcopy(pool.state_dict()))
    assert torch.equal(fresh.images, pool.images) and int(fresh.count) == 2
    assert ImagePool(size=0).query(torch.ones(1, 1, 2, 2)).shape == (1, 1, 2, 2)


def test_attention_gates_present_and_maps_in_unit_range():
    model = tiny("attention-cyclegan.v1")
    gates = [m for m in model.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == 2 * spec("attention-cyclegan.v1").tiny["depth"]  # one per skip, per G
    assert not any(isinstance(m, AttentionGate) for m in tiny("cyclegan.v1").modules())
    out, maps = model.G_st(batch(6)[0], return_attention=True)
    assert out.shape == (2, 1, 32, 32)
    assert [tuple(a.shape) for a in maps] == [(2, 1, 16, 16), (2, 1, 32, 32)]
    for alpha in maps:
        assert alpha.min() >= 0 and alpha.max() <= 1


def test_attention_gate_weights_skip_features():
    gate = AttentionGate(channels=3, inner=2)
    f, g = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    gated, alpha = gate(f, g)
    torch.testing.assert_close(gated, f * alpha)


def test_generators_default_sizes():
    """The papers' default layouts (channels 64-128-256, 9 blocks; U-Net widths 64..1024)."""
    resnet = ResnetGenerator()
    assert sum(p.numel() for p in resnet.parameters()) == 11_365_633
    assert len([m for m in resnet.modules() if m.__class__.__name__ == "ResidualBlock"]) == 9
    unet = AttentionUNetGenerator()
    assert sum(p.numel() for p in unet.parameters()) == 34_861_797
    assert unet.down[-1][-3].out_channels == 1024


def _blobs(n: int, gen: torch.Generator, size: int = 32) -> torch.Tensor:
    """(n, 1, size, size) smooth random blobs on a dark background, in [-1, 1]."""
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    centres = torch.rand(n, 3, 2, generator=gen) * (size - 8) + 4
    radii = torch.rand(n, 3, generator=gen) * 3 + 2.5
    d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
    image = torch.exp(-d2 / (2 * radii[..., None, None] ** 2)).sum(1, keepdim=True).clamp(max=1)
    return image * 2 - 1


def test_toy_inverted_contrast_is_learned():
    """Unpaired source blobs and target = inverted-contrast blobs (1 - image in [0, 1], i.e.
    -image in [-1, 1]): 200 steps of a small CycleGAN bring translate(source) closer to -source."""
    model = tiny("cyclegan.v1", width=8, disc_width=8)
    opts = model.optimizers(spec("cyclegan.v1").hparams)
    held_out = _blobs(16, torch.Generator().manual_seed(123))

    def error() -> float:
        with torch.no_grad():
            return float((model.translate(held_out) + held_out).abs().mean())

    gen = torch.Generator().manual_seed(1)
    initial = error()
    for _ in range(200):
        model.train_step(_blobs(2, gen), -_blobs(2, gen), opts, no_autocast)
    assert error() < 0.75 * initial
