"""cut.v1: contract, PatchNCE, one-way vs bidirectional, determinism, exact resume, a toy effect."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from tests.translation.test_cyclegan import checkpoint, restore_training
from udaseg.errors import UdasegError
from udaseg.translation import registry
from udaseg.translation.cut import CUT, encoder_points, patch_nce_loss, run_recording

STEP_KEYS = {"g_adv_t", "nce_st", "nce_idt_st", "d_t", "total"}
BACK_KEYS = {"g_adv_s", "nce_ts", "nce_idt_ts", "d_s"}
no_autocast = contextlib.nullcontext


pytestmark = pytest.mark.usefixtures("one_thread")


def spec() -> registry.TranslatorSpec:
    # importing udaseg.translation.cut registered it; read the registry directly so these tests
    # do not depend on the other built-in translator modules
    return registry._REGISTRY["cut.v1"]


def tiny(seed: int = 0, **kwargs) -> CUT:
    torch.manual_seed(seed)
    return spec().builder(**{**spec().tiny, **kwargs})


def batch(seed: int, n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(n, 1, size, size, generator=gen) * 2 - 1 for _ in range(2))


def snapshot(modules) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def test_registered_with_the_papers_settings():
    entry = spec()
    assert not entry.has_style_codes
    hp = entry.hparams
    assert hp["lr_g"] == hp["lr_d"] == 2e-4 and hp["betas"] == [0.5, 0.999]
    assert hp["batch_size"] == 1 and hp["patch_size"] == [256, 256]
    assert hp["nce_temperature"] == 0.07 and hp["num_patches"] == 256
    assert hp["lambda_gan"] == 1.0 and hp["lambda_nce"] == 1.0 and hp["nce_idt"] is True
    assert hp["steps"] == registry._REGISTRY["cyclegan.v1"].hparams["steps"]
    # every loss setting in the hparams reaches the constructor (and so the checkpoint)
    kwargs = registry.constructor_kwargs("cut.v1", hp, {})
    assert set(kwargs) == {
        "lambda_gan",
        "lambda_nce",
        "nce_idt",
        "nce_temperature",
        "num_patches",
    }


def test_every_network_exists_from_construction():
    """The NCE heads are built from the known channel counts, not at first use: a fresh model's
    state_dict is the whole method, so a checkpoint loads before any step."""
    model = tiny()
    before = {k: v.shape for k, v in model.state_dict().items()}
    assert any(k.startswith("st.heads.") for k in before)
    model.train_step(*batch(1), model.optimizers(spec().hparams), no_autocast)
    assert {k: v.shape for k, v in model.state_dict().items()} == before
    widths = [c for _, c in encoder_points(model.st.G, 1)]
    assert widths == [1, 4, 8, 16, 16]  # input, c7s1-w, d2w, d4w, one residual block
    assert [mlp[0].in_features for mlp in model.st.heads.mlps] == [1, 8, 16, 16]


def test_train_step_updates_everything_and_reports_each_term():
    model = tiny()
    opts = model.optimizers(spec().hparams)
    assert set(opts) == {"generator", "discriminator"}
    g_params = {id(p) for p in opts["generator"].param_groups[0]["params"]}
    assert g_params == {id(p) for m in (model.st.G, model.st.heads) for p in m.parameters()}
    g_before, d_before = snapshot([model.st.G, model.st.heads]), snapshot([model.st.D])
    out = model.train_step(*batch(1), opts, no_autocast)
    assert set(out) == STEP_KEYS
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in out.values())
    after_g, after_d = snapshot([model.st.G, model.st.heads]), snapshot([model.st.D])
    assert all(not torch.equal(a, b) for a, b in zip(g_before, after_g, strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(d_before, after_d, strict=True))
    # FastCUT's choice: no identity term
    plain = tiny(nce_idt=False)
    assert set(plain.train_step(*batch(1), plain.optimizers(spec().hparams), no_autocast)) == (
        STEP_KEYS - {"nce_idt_st"}
    )


def test_total_is_eq5_with_the_identity_term_averaged():
    model = tiny(lambda_gan=2.0, lambda_nce=3.0)
    out = model.train_step(*batch(2), model.optimizers(spec().hparams), no_autocast)
    expected = 2.0 * out["g_adv_t"] + 3.0 * 0.5 * (out["nce_st"] + out["nce_idt_st"])
    assert out["total"] == pytest.approx(expected, rel=1e-5)


def test_one_way_translate_shapes_panels_and_a_clear_translate_back_error():
    model = tiny()
    source, target = batch(3, n=3)
    with torch.no_grad():
        out = model.translate(source)
    assert out.shape == (3, 1, 32, 32) and out.min() >= -1 and out.max() <= 1
    assert not model.translates_back
    with pytest.raises(UdasegError, match="one-way") as refused:
        model.translate_back(target)
    assert "--set bidirectional=true" in refused.value.hint
    panels = model.samples(source, target)
    assert set(panels) == {"source", "translated", "reconstructed", "target"}
    for panel in panels.values():
        assert panel.shape == (3, 1, 32, 32) and panel.device.type == "cpu"
        assert not panel.requires_grad
    torch.testing.assert_close(panels["translated"], out)
    # no cycle one-way: "reconstructed" is the identity mapping G(target)
    with torch.no_grad():
        torch.testing.assert_close(panels["reconstructed"], model.translate(target))
    with pytest.raises(UdasegError):
        model.encode_style(target)


def test_bidirectional_trains_both_directions_and_translates_back():
    model = tiny(bidirectional=True)
    assert model.translates_back
    opts = model.optimizers(spec().hparams)
    before = snapshot([model.ts.G, model.ts.heads, model.ts.D])
    out = model.train_step(*batch(4), opts, no_autocast)
    assert set(out) == STEP_KEYS | BACK_KEYS
    after = snapshot([model.ts.G, model.ts.heads, model.ts.D])
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    source, target = batch(5, n=3)
    with torch.no_grad():
        back = model.translate_back(target)
        panels = model.samples(source, target)
    assert back.shape == (3, 1, 32, 32) and back.min() >= -1 and back.max() <= 1
    assert {"target_translated", "target_reconstructed"} <= set(panels)
    with torch.no_grad():  # bidirectional: the contract's round trip
        torch.testing.assert_close(
            panels["reconstructed"], model.translate_back(model.translate(source))
        )


def test_discriminator_frozen_only_during_the_generator_update():
    model = tiny()
    model.train_step(*batch(6), model.optimizers(spec().hparams), no_autocast)
    assert all(p.requires_grad for p in model.st.D.parameters())


def _run(seed: int, steps: int = 3) -> tuple[list[dict], dict]:
    model = tiny(seed=seed)
    opts = model.optimizers(spec().hparams)
    torch.manual_seed(100)  # the patch locations are drawn from torch's global generator
    losses = [model.train_step(*batch(10 + i), opts, no_autocast) for i in range(steps)]
    return losses, model.state_dict()


def test_same_seed_gives_identical_losses_and_weights():
    (losses_a, weights_a), (losses_b, weights_b) = _run(0), _run(0)
    assert losses_a == losses_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    losses_c, _ = _run(1)
    assert losses_c != losses_a


@pytest.mark.parametrize("bidirectional", [False, True])
def test_resume_is_exact(bidirectional):
    """3 steps, checkpoint (weights, optimisers, torch RNG), 2 steps; a fresh model loaded from
    the checkpoint repeats the 2 steps bit for bit (the patch locations included)."""
    batches = [batch(20 + i) for i in range(5)]
    model = tiny(bidirectional=bidirectional)
    opts = model.optimizers(spec().hparams)
    for source, target in batches[:3]:
        model.train_step(source, target, opts, no_autocast)
    buffer = checkpoint(model, opts)
    expected_losses = [model.train_step(s, t, opts, no_autocast) for s, t in batches[3:]]

    saved = torch.load(buffer, weights_only=True)
    fresh = tiny(seed=123, bidirectional=bidirectional)
    fresh.load_state_dict(saved["model"])
    fresh_opts = restore_training(fresh, spec().hparams, saved)
    losses = [fresh.train_step(s, t, fresh_opts, no_autocast) for s, t in batches[3:]]
    assert losses == expected_losses
    expected, got = model.state_dict(), fresh.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_patch_nce_picks_the_same_location_among_the_same_images_locations():
    """Positives on the diagonal, negatives only from the same image: another image's keys do
    not change an image's loss, and matching queries give a far lower loss than shuffled ones."""
    gen = torch.Generator().manual_seed(0)
    key = F.normalize(torch.randn(2, 16, 8, generator=gen), dim=-1)
    loss = patch_nce_loss(key, key, 0.07)
    shuffled = patch_nce_loss(key[:, torch.randperm(16, generator=gen)], key, 0.07)
    assert loss < 0.1 < shuffled
    first = patch_nce_loss(key[:1], key[:1], 0.07)
    other = key.clone()
    other[1] = F.normalize(torch.randn(16, 8, generator=gen), dim=-1)
    torch.testing.assert_close(patch_nce_loss(key[:1], other[:1], 0.07), first)  # image 0 alone
    similarities = key[0] @ key[0].T / 0.07
    manual = F.cross_entropy(similarities, torch.arange(16))
    torch.testing.assert_close(first, manual)


def _nce_of(model: CUT, images: torch.Tensor, output: torch.Tensor) -> float:
    """The model's PatchNCE between ``images`` and a rendering ``output`` of them."""
    indices = model._indices
    _, keys = run_recording(model.st.G, images, indices, full=False)
    _, queries = run_recording(model.st.G, output, indices, full=False)
    with torch.no_grad():
        loss = model.patch_nce(
            model.st.heads, [keys[i] for i in indices], [queries[i] for i in indices], no_autocast
        )
    return float(loss)


def test_nce_is_lower_for_an_identity_like_mapping_than_for_a_shuffled_one():
    model = tiny(num_patches=64)
    images, _ = batch(7)
    torch.manual_seed(0)
    identity_like = _nce_of(model, images, images + 0.05 * torch.randn_like(images))
    # the same pixels in another arrangement: the intensities are kept, the content is not
    order = torch.randperm(32 * 32)
    shuffled = images.flatten(2)[:, :, order].view_as(images)
    assert identity_like < _nce_of(model, images, shuffled) - 1.0


def test_nce_and_losses_are_float32_under_bf16_autocast():
    model = tiny()

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    images, _ = batch(8)
    indices = model._indices
    with bf16():
        _, keys = run_recording(model.st.G, images, indices, full=False)
    assert keys[indices[-1]].dtype == torch.bfloat16  # the forward does run in bf16
    loss = model.patch_nce(
        model.st.heads, [keys[i] for i in indices], [keys[i] for i in indices], bf16
    )
    assert loss.dtype == torch.float32
    out = model.train_step(*batch(9), model.optimizers(spec().hparams), bf16)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())


def test_bad_nce_settings_are_refused_naming_the_option():
    with pytest.raises(UdasegError, match="nce_layers=0,9") as refused:
        tiny(nce_layers="0,9")
    assert refused.value.exit_code == 2 and "residual" in refused.value.hint
    with pytest.raises(UdasegError, match="nce_layers"):
        tiny(nce_layers=[2, 2])
    with pytest.raises(UdasegError, match="nce_temperature"):
        tiny(nce_temperature=0)
    assert tiny(nce_layers="0,3").nce_layers == (0, 3)  # as --set gives it


def _shapes(n: int, gen: torch.Generator, size: int = 32) -> torch.Tensor:
    """(n, 1, size, size) images in [-1, 1]: three random discs or rectangles at +1 on -1."""
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    out = torch.full((n, 1, size, size), -1.0)
    for image in out:
        for _ in range(3):
            cy, cx = (torch.rand(2, generator=gen) * (size - 10) + 5).tolist()
            ry, rx = (torch.rand(2, generator=gen) * 4 + 3).tolist()
            if float(torch.rand((), generator=gen)) < 0.5:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= ry**2
            else:
                inside = ((yy - cy).abs() <= ry) & ((xx - cx).abs() <= rx)
            image[0][inside] = 1.0
    return out


def _edges(images: torch.Tensor) -> torch.Tensor:
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx, gy = F.conv2d(images, sobel, padding=1), F.conv2d(images, sobel.mT, padding=1)
    return (gx**2 + gy**2).sqrt()


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_toy_appearance_change_is_learned_with_the_edges_kept():
    """Unpaired toy domains: source shapes at +1 on a -1 background; target shapes (separate
    ones) at 0.9 on a -0.3 background. 300 steps of a tiny CUT move the translated background
    most of the way from -1 to the target's -0.3 while the output still follows the input
    pixel by pixel and edge by edge (PatchNCE keeps the content; an untrained G does not).

    A contrast inversion (target = -source) is not used: measured over seeds, a tiny CUT learns
    it only sometimes at this budget (docs/methods/cut.md, "Contrast inversions")."""
    gen = torch.Generator().manual_seed(1)
    source_bank, target_bank = _shapes(128, gen), 0.6 * _shapes(128, gen) + 0.3
    held_out = _shapes(16, torch.Generator().manual_seed(123))
    background = held_out < 0
    model = tiny(width=8, disc_width=8, mlp_width=16, num_patches=64)
    hparams = {**spec().hparams, "lr_g": 1e-3, "lr_d": 1e-3}
    opts = model.optimizers(hparams)

    def measures() -> tuple[float, float, float]:
        with torch.no_grad():
            out = model.translate(held_out)
        return (
            float(out[background].mean()),
            _correlation(out, held_out),
            _correlation(_edges(out), _edges(held_out)),
        )

    _, start_corr, start_edges = measures()
    for _ in range(300):
        pick = torch.randint(128, (2,), generator=gen), torch.randint(128, (2,), generator=gen)
        model.train_step(source_bank[pick[0]], target_bank[pick[1]], opts, no_autocast)
    level, corr, edges = measures()
    assert abs(level - (-0.3)) < 0.25, level  # from -1: at least ~2/3 of the way
    assert corr > 0.7 and corr > start_corr + 0.3, (corr, start_corr)
    assert edges > 0.5 and edges > start_edges + 0.3, (edges, start_edges)
