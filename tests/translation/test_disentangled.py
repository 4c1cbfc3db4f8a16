"""disentangled.v1 (DAR-UNet) and domain-style.v1 (GLUA): the registry contract, training steps,
exact resume, style codes, EMA, the domain-conditioned discriminator and a toy sanity run."""

from __future__ import annotations

import contextlib
import inspect
import math

import pytest
import torch

from udaseg.errors import UdasegError
from udaseg.translation import domain_style
from udaseg.translation.registry import create_translator, translator_spec

NAMES = ["disentangled.v1", "domain-style.v1"]
KEYS = {
    "disentangled.v1": {
        "image_rec",
        "cycle",
        "content_rec",
        "style_rec",
        "adv_image",
        "adv_content",
        "style_reg",
        "total",
        "d_source",
        "d_target",
        "d_content",
    },
    "domain-style.v1": {
        "image_rec",
        "cycle",
        "content_rec",
        "adv",
        "total",
        "d_source",
        "d_target",
    },
}
HPARAM_KEYS = {"lr_g", "lr_d", "betas", "batch_size", "patch_size", "steps", "schedule"}
NOAUTOCAST = contextlib.nullcontext


def _tiny(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return create_translator(name, **{**translator_spec(name).tiny, **kwargs})


def _batch(k: int, n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + k)
    return tuple(torch.rand(n, 1, size, size, generator=gen) * 2 - 1 for _ in range(2))


def _train(model, optimizers, steps) -> dict[str, float]:
    parts: dict[str, float] = {}
    for k in steps:
        parts = model.train_step(*_batch(k), optimizers, NOAUTOCAST)
    return parts


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.named_parameters())


# --- both methods -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_registered_hparams_and_kwargs(name):
    spec = translator_spec(name)
    assert spec.has_style_codes == (name == "disentangled.v1")
    assert set(spec.hparams) >= HPARAM_KEYS
    assert spec.hparams["patch_size"] == [256, 256] and spec.hparams["schedule"] == "constant"
    # loss weights (and ema_decay) in the hparams are constructor kwargs, so they are checkpointed
    signature = inspect.signature(spec.builder)
    for key in set(spec.hparams) - HPARAM_KEYS - {"weight_decay"}:
        assert key in signature.parameters, key
        assert signature.parameters[key].default == spec.hparams[key], key


@pytest.mark.parametrize("name", NAMES)
def test_train_step_returns_finite_losses_and_updates_both_players(name):
    model = _tiny(name)
    hparams = translator_spec(name).hparams
    optimizers = model.optimizers(hparams)
    assert set(optimizers) == {"generator", "discriminator"}
    assert optimizers["generator"].param_groups[0]["lr"] == hparams["lr_g"]
    assert optimizers["discriminator"].param_groups[0]["lr"] == hparams["lr_d"]
    discs = model.discriminators if name == "disentangled.v1" else [model.disc]
    gens = [model.generator] if name == "disentangled.v1" else model.generators
    g_before = [_params(g) for g in gens]
    d_before = [_params(d) for d in discs]
    parts = model.train_step(*_batch(0), optimizers, NOAUTOCAST)
    assert set(parts) == KEYS[name]
    assert all(isinstance(v, float) and math.isfinite(v) for v in parts.values())
    assert all(_changed(b, g) for b, g in zip(g_before, gens, strict=True))
    assert all(_changed(b, d) for b, d in zip(d_before, discs, strict=True))
    # the discriminators are trainable again after the step that froze them
    assert all(p.requires_grad for d in discs for p in d.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_train_step_under_bf16_autocast(name):
    model = _tiny(name)
    optimizers = model.optimizers(translator_spec(name).hparams)
    calls = []

    def autocast():
        calls.append(1)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    parts = model.train_step(*_batch(0), optimizers, autocast)
    assert calls and all(math.isfinite(v) for v in parts.values())


@pytest.mark.parametrize("name", NAMES)
def test_translate_shape_range_and_samples(name):
    model = _tiny(name)
    source, target = _batch(0)
    with torch.no_grad():
        out = model.translate(source)
        back = model.translate_back(target)
        odd = model.translate(torch.rand(3, 1, 30, 26) * 2 - 1)  # padded to /4 and cropped back
        panels = model.samples(source, target)
    assert out.shape == back.shape == source.shape
    assert odd.shape == (3, 1, 30, 26)
    assert out.abs().max() <= 1 and back.abs().max() <= 1
    assert {"source", "translated", "reconstructed", "target"} <= set(panels)
    assert all(p.shape == source.shape for p in panels.values())
    with pytest.raises(UdasegError):
        model.translate(torch.zeros(2, 32, 32))


@pytest.mark.parametrize("name", NAMES)
def test_resume_continues_identically(name, tmp_path):
    hparams = translator_spec(name).hparams
    model = _tiny(name)
    optimizers = model.optimizers(hparams)
    _train(model, optimizers, range(3))
    path = tmp_path / "state.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "rng": torch.get_rng_state(),
        },
        path,
    )
    _train(model, optimizers, range(3, 5))
    expected = model.state_dict()

    saved = torch.load(path, weights_only=True)
    fresh = _tiny(name, seed=99)
    fresh.load_state_dict(saved["model"])
    fresh_optimizers = fresh.optimizers(hparams)
    for key, optimizer in fresh_optimizers.items():
        optimizer.load_state_dict(saved["optimizers"][key])
    torch.set_rng_state(saved["rng"])
    _train(fresh, fresh_optimizers, range(3, 5))
    got = fresh.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


# --- disentangled.v1 ----------------------------------------------------------------------------


def test_disentangled_style_codes():
    model = _tiny("disentangled.v1")
    source, target = _batch(0, n=3)
    with torch.no_grad():
        codes = model.encode_style(target)
        assert codes.shape == (3, 8)
        a = model.translate(source, torch.randn(3, 8))
        b = model.translate(source, torch.randn(3, 8))
        assert (a - b).abs().max() > 1e-3
        # one code for the whole batch broadcasts; None is the running mean (zero before training)
        one = model.translate(source, codes[:1])
        assert torch.allclose(one, model.translate(source, codes[:1].expand(3, -1)))
        assert torch.equal(model.translate(source), model.translate(source, torch.zeros(1, 8)))
    with pytest.raises(UdasegError):
        model.translate(source, torch.zeros(3, 5))


def test_disentangled_default_style_is_running_target_mean():
    model = _tiny("disentangled.v1", ema_decay=0.5)
    optimizers = model.optimizers(translator_spec("disentangled.v1").hparams)
    _train(model, optimizers, range(2))
    _, target = _batch(1)
    with torch.no_grad():
        # debiased EMA (decay 0.5) of two batch means: the last one weighs 2/3, so not equal
        mean = model.mean_style("target")
        assert mean.shape == (8,)
        last = model.encode_style(target).mean(0)
        assert not torch.allclose(mean, last)
        assert torch.equal(model.translate(target), model.translate(target, mean[None]))


def test_disentangled_ema_follows_decay_formula():
    decay = 0.9
    model = _tiny("disentangled.v1", ema_decay=decay)
    optimizers = model.optimizers(translator_spec("disentangled.v1").hparams)
    ema_params = {id(p) for p in model.generator_ema.parameters()}
    assert not any(
        id(p) in ema_params for g in optimizers["generator"].param_groups for p in g["params"]
    )
    key = "decoder.mlp.0.weight"
    # warm-up: (1 + n) / (10 + n) after n updates until that reaches the decay (n = 80 for 0.9)
    expected = [min(decay, (1 + n) / (10 + n)) for n in range(81)]
    assert expected[0] == pytest.approx(0.1) and expected[-1] == decay
    for step, n in enumerate((0, 80)):
        model.ema_steps.fill_(n)
        assert model.ema_decay_now() == pytest.approx(expected[n])
        before = dict(model.generator_ema.named_parameters())[key].detach().clone()
        model.train_step(*_batch(step), optimizers, NOAUTOCAST)
        live = dict(model.generator.named_parameters())[key].detach()
        ema = dict(model.generator_ema.named_parameters())[key].detach()
        assert not torch.equal(ema, live)
        mix = expected[n] * before + (1 - expected[n]) * live
        assert torch.allclose(ema, mix, rtol=0, atol=1e-6)
    assert "generator_ema.decoder.mlp.0.weight" in model.state_dict()


def test_disentangled_style_regulariser_shrinks_the_codes():
    # every other weight 0: the step's only generator gradient is the L2 pull on the style codes
    off = dict.fromkeys(
        ["lambda_image", "lambda_cycle", "lambda_content", "lambda_style", "lambda_adv"], 0.0
    )
    model = _tiny("disentangled.v1", lambda_adv_content=0.0, lambda_style_reg=1.0, **off)
    optimizers = model.optimizers({**translator_spec("disentangled.v1").hparams, "lr_g": 1e-2})
    source, target = _batch(0)
    g = model.generator

    def size() -> float:
        with torch.no_grad():
            return float(
                g["style_source"](source).pow(2).mean() + g["style_target"](target).pow(2).mean()
            )

    before = size()
    parts = model.train_step(source, target, optimizers, NOAUTOCAST)
    assert parts["style_reg"] == pytest.approx(before, rel=1e-5)
    assert parts["total"] == pytest.approx(before, rel=1e-5)
    for _ in range(4):
        model.train_step(source, target, optimizers, NOAUTOCAST)
    assert size() < 0.5 * before


def test_disentangled_shared_content_encoder():
    model = _tiny("disentangled.v1")
    source, target = _batch(0)
    with torch.no_grad():
        c_source, c_target = model.content_code(source), model.content_code(target)
    assert c_source.shape == c_target.shape == (2, 16, 8, 8)  # 4 * width channels, H / 4
    # one encoder for both domains, two style encoders, one decoder (DAR-UNet Sec. III-A)
    assert set(model.generator) == {"content", "style_source", "style_target", "decoder"}


# --- domain-style.v1 ----------------------------------------------------------------------------


def test_domain_style_has_no_style_codes():
    model = _tiny("domain-style.v1")
    source, target = _batch(0)
    with pytest.raises(UdasegError):
        model.encode_style(target)
    with pytest.raises(UdasegError):
        model.translate(source, torch.zeros(2, 8))
    with torch.no_grad():
        # the same image rendered with the target's and with the source's learned style
        assert (model.translate(source) - model.translate_back(source)).abs().max() > 1e-3


def test_domain_style_discriminator_is_conditioned_on_the_domain():
    model = _tiny("domain-style.v1")
    seen: list[torch.Tensor] = []
    hook = model.disc.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    optimizers = model.optimizers(translator_spec("domain-style.v1").hparams)
    model.train_step(*_batch(0), optimizers, NOAUTOCAST)
    hook.remove()
    assert seen and all(x.shape[1] == 3 for x in seen)  # image + one-hot(2) label maps
    labels = {tuple(x[0, 1:, 0, 0].tolist()) for x in seen}
    assert labels == {(1.0, 0.0), (0.0, 1.0)}
    assert all(torch.equal(x[:, 1:], x[:, 1:, :1, :1].expand_as(x[:, 1:])) for x in seen)
    image = _batch(1)[0]
    with torch.no_grad():
        assert (
            model.disc(image, domain_style.SOURCE) - model.disc(image, domain_style.TARGET)
        ).abs().max() > 0


# --- toy sanity run -----------------------------------------------------------------------------


def _blobs(n: int, gen: torch.Generator, size: int = 32) -> torch.Tensor:
    """(n, 1, size, size) smooth random blobs (3 Gaussians each) in [-1, 1], background -1."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.zeros(n, 1, size, size)
    for _ in range(3):
        centre = torch.rand(n, 2, generator=gen) * (size - 8) + 4
        radius = (torch.rand(n, generator=gen) * 4 + 3)[:, None, None]
        height = (torch.rand(n, generator=gen) * 0.5 + 0.5)[:, None, None]
        d2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
        image += (height * torch.exp(-d2 / (2 * radius**2)))[:, None]
    return image.clamp(0, 1) * 2 - 1


def _halve_contrast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x


@pytest.mark.e2e  # ~17 s for both methods on 2 idle CPU cores
@pytest.mark.parametrize("name", NAMES)
def test_toy_translation_learns_the_target_mapping(name):
    """150 unpaired tiny steps at the paper's learning rates: translate(source) approaches the
    true mapping (the target is the source at half contrast; |translate - truth| drops from ~0.3
    to ~0.08-0.09). A contrast *inversion* is not used: with every weight shared between the
    domains (AdaIN parameters only differ), neither method learns a polarity flip in a few
    thousand tiny steps (error stays ~0.9-1.0 against ~0.65 at initialisation)."""
    model = _tiny(name, **({"ema_decay": 0.9} if name == "disentangled.v1" else {}))
    optimizers = model.optimizers(translator_spec(name).hparams)
    gen = torch.Generator().manual_seed(0)
    held_out = _blobs(8, torch.Generator().manual_seed(123))

    def error() -> float:
        with torch.no_grad():
            return float((model.translate(held_out) - _halve_contrast(held_out)).abs().mean())

    initial = error()
    for _ in range(150):
        source, target = _blobs(4, gen), _halve_contrast(_blobs(4, gen))
        model.train_step(source, target, optimizers, NOAUTOCAST)
    assert error() < 0.5 * initial
