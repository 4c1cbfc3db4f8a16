"""Batch augmentation: reproducibility, geometry conventions, label integrity, padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from udaseg.data.augment import AugmentConfig, affine_grid, affine_theta, augment
from udaseg.errors import UdasegError

# geometry only, no randomness in it: for exact-position checks
STILL = {
    "rotation_deg": 0.0,
    "scale": (1.0, 1.0),
    "shear": 0.0,
    "translate": 0.0,
    "intensity_gamma": None,
    "p": 1.0,
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(shape, classes=3, seed=0) -> torch.Tensor:
    """Integer label maps made of smooth blobs (realistic for interpolation checks)."""
    gen = torch.Generator().manual_seed(seed)
    n, spatial = shape[0], shape[1:]
    coarse = torch.rand(n, classes, *[max(2, s // 8) for s in spatial], generator=gen)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    smooth = F.interpolate(coarse, size=spatial, mode=mode, align_corners=False)
    return smooth.argmax(1)


def _batch(shape=(4, 32, 32), seed=0):
    labels = _blobs(shape, seed=seed)
    images = labels.float().unsqueeze(1) / 2.0 * 2.0 - 1.0  # classes 0,1,2 -> -1, 0, 1
    return images, labels


def test_same_seed_same_output_different_seed_different():
    images, labels = _batch()
    cfg = AugmentConfig(p=1.0, noise_std=0.05, elastic_alpha=2.0, elastic_sigma=8.0)
    a = augment(images, labels, cfg, _gen(1))
    b = augment(images, labels, cfg, _gen(1))
    c = augment(images, labels, cfg, _gen(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_restoring_the_generator_state_repeats_the_draws():
    images, labels = _batch()
    gen, cfg = _gen(3), AugmentConfig(p=0.5)
    augment(images, labels, cfg, gen)
    saved = gen.get_state()
    first = augment(images, labels, cfg, gen)
    gen.set_state(saved)
    again = augment(images, labels, cfg, gen)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("shape", [(4, 32, 32), (2, 6, 24, 24)])
def test_labels_stay_class_ids_of_the_input(shape):
    images, labels = _batch(shape)
    labels = labels * 3  # ids 0, 3, 6: interpolation would invent 1, 2, 4, 5
    cfg = AugmentConfig(p=1.0, rotation_deg=30.0, shear=0.1, elastic_alpha=2.0, elastic_sigma=8.0)
    out_images, out_labels = augment(images, labels, cfg, _gen())
    assert out_labels.dtype == labels.dtype and out_labels.shape == labels.shape
    assert out_images.shape == images.shape and out_images.dtype == images.dtype
    assert set(out_labels.unique().tolist()) <= {0, 3, 6}
    assert not torch.equal(out_labels, labels)


def test_no_augmentation_returns_the_inputs():
    images, labels = _batch()
    gen = _gen()
    state = gen.get_state()
    for cfg in (None, AugmentConfig(p=0.0)):
        out_images, out_labels = augment(images, labels, cfg, gen)
        assert out_images is images and out_labels is labels
    assert torch.equal(gen.get_state(), state)  # and draws nothing


def test_unchosen_samples_come_back_bit_identical():
    labels = _blobs((16, 16, 16))
    images = torch.randn(16, 1, 16, 16, generator=_gen(9))  # no sample survives a warp unchanged
    out_images, out_labels = augment(images, labels, AugmentConfig(p=0.5), _gen(5))
    same = [torch.equal(out_images[i], images[i]) for i in range(16)]
    assert 0 < sum(same) < 16
    for i in range(16):
        if same[i]:
            assert torch.equal(out_labels[i], labels[i])


def test_rotation_of_90_degrees_is_counter_clockwise_like_rot90():
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 2, 12] = 1.0  # a marked pixel in the top-right quadrant
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, 2, 12] = 1
    cfg = AugmentConfig(**{**STILL, "rotation_deg": (90.0, 90.0)})
    out_image, out_labels = augment(image, labels, cfg, _gen())
    # counter-clockwise on screen: top-right goes to top-left, (row, col) -> (W - 1 - col, row)
    assert out_labels[0].nonzero().tolist() == [[3, 2]]
    assert out_image[0, 0, 3, 2].item() == pytest.approx(1.0, abs=1e-4)
    ramp = torch.arange(256.0).view(1, 1, 16, 16)
    rotated, _ = augment(ramp, None, cfg, _gen())
    assert torch.allclose(rotated, torch.rot90(ramp, 1, dims=(-2, -1)), atol=1e-3)


def test_affine_grid_matches_torch():
    u = torch.rand(5, 6, generator=_gen(4), dtype=torch.float64)
    theta = affine_theta(u, AugmentConfig(rotation_deg=180.0, shear=0.3, translate=0.2), 7, 9)
    expected = F.affine_grid(theta, [5, 1, 7, 9], align_corners=False)
    assert torch.allclose(affine_grid(theta, 7, 9), expected, atol=1e-12)


def test_translation_and_scale_conventions():
    height, width = 12, 16
    cfg = AugmentConfig(**{**STILL, "translate": 0.25, "scale": (2.0, 2.0)})
    u = torch.tensor([[0.5, 0.0, 0.5, 0.5, 1.0, 1.0]], dtype=torch.float64)  # +max shifts
    image = torch.zeros(1, 1, height, width)
    image[0, 0, 5, 7] = 1.0
    grid = F.affine_grid(
        affine_theta(u, AugmentConfig(**{**STILL, "translate": 0.25}), height, width).float(),
        [1, 1, height, width],
        False,
    )
    shifted = F.grid_sample(image, grid, mode="nearest", align_corners=False)
    assert shifted[0, 0].nonzero().tolist() == [[5 + 3, 7 + 4]]  # right by W/4, down by H/4
    u_zoom = torch.tensor([[0.5, 1.0, 0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    block = torch.zeros(1, 1, height, width)
    block[0, 0, 5:7, 7:9] = 1.0  # 2x2 at the centre
    grid = F.affine_grid(
        affine_theta(u_zoom, cfg, height, width).float(), [1, 1, height, width], False
    )
    zoomed = F.grid_sample(block, grid, mode="nearest", align_corners=False)
    assert zoomed.sum().item() == 16  # 4x4: zoom > 1 enlarges the content


def test_3d_is_transformed_in_plane_about_the_slice_axis():
    labels2d = _blobs((1, 24, 24))
    volume_labels = labels2d.unsqueeze(1).repeat(2, 5, 1, 1)  # (2, 5, 24, 24), equal slices
    images = volume_labels.float().unsqueeze(1)
    cfg = AugmentConfig(p=1.0, rotation_deg=40.0)
    out_images, out_labels = augment(images, volume_labels, cfg, _gen())
    for d in range(1, 5):  # every slice got the same in-plane transform
        assert torch.equal(out_labels[:, d], out_labels[:, 0])
        assert torch.equal(out_images[:, :, d], out_images[:, :, 0])
    assert not torch.equal(out_labels, volume_labels)


def test_3d_elastic_keeps_shapes_and_label_set_and_varies_along_depth():
    labels2d = _blobs((1, 32, 32))
    labels = labels2d.unsqueeze(1).repeat(2, 8, 1, 1)
    images = labels.float().unsqueeze(1)
    cfg = AugmentConfig(**{**STILL, "elastic_alpha": 3.0, "elastic_sigma": 4.0})
    out_images, out_labels = augment(images, labels, cfg, _gen())
    assert out_images.shape == images.shape and out_labels.shape == labels.shape
    assert set(out_labels.unique().tolist()) <= set(labels.unique().tolist())
    assert not torch.equal(out_labels[:, 0], out_labels[:, -1])  # a field, not one 2D warp


@pytest.mark.parametrize("shape", [(8, 48, 48), (2, 6, 40, 40)])
def test_image_and_label_stay_aligned(shape):
    # two classes, so that rounding the bilinear image is a nearest lookup except at ties
    labels = _blobs(shape, classes=2)
    images = labels.float().unsqueeze(1)  # an image equal to its label
    cfg = AugmentConfig(
        p=1.0,
        rotation_deg=30.0,
        shear=0.1,
        translate=0.1,
        elastic_alpha=2.0,
        elastic_sigma=8.0,
        intensity_gamma=None,
    )
    out_images, out_labels = augment(images, labels, cfg, _gen())
    rounded = out_images.squeeze(1).round().long()
    assert (rounded == out_labels).float().mean().item() > 0.99
    # a one-voxel misalignment would show: the same comparison shifted fails it
    assert (rounded[..., 1:] == out_labels[..., :-1]).float().mean().item() < 0.97


def test_padding_images_with_their_minimum_and_labels_with_zero():
    images = torch.full((2, 1, 20, 20), 0.5)
    images[0, 0, :2] = -1.0  # sample 0 has a [-1, 1]-style background
    images[1] += 3.0  # sample 1's minimum is 3.5
    labels = torch.full((2, 20, 20), 2)
    cfg = AugmentConfig(**{**STILL, "rotation_deg": (45.0, 45.0)})
    out_images, out_labels = augment(images, labels, cfg, _gen())
    corners = (slice(None), 0, 0)  # a corner rotated by 45 degrees comes from outside
    assert out_images[0, 0, 0, 0].item() == pytest.approx(-1.0)
    assert out_images[1, 0, 19, 19].item() == pytest.approx(3.5)
    assert torch.all(out_labels[corners] == 0)
    assert out_labels[:, 10, 10].tolist() == [2, 2]
    assert out_images.min().item() >= -1.0 - 1e-6


def test_intensity_changes_images_only_and_keeps_their_range():
    images, labels = _batch((6, 24, 24))
    images = images + 0.1 * torch.randn(images.shape, generator=_gen(7))
    cfg = AugmentConfig(**{**STILL, "intensity_gamma": (0.5, 2.0), "noise_std": 0.2})
    out_images, out_labels = augment(images, labels, cfg, _gen())
    assert torch.equal(out_labels, labels)  # an identity warp with nearest is exact
    low, high = images.amin(dim=(1, 2, 3)), images.amax(dim=(1, 2, 3))
    assert torch.all(out_images.amin(dim=(1, 2, 3)) >= low - 1e-5)
    assert torch.all(out_images.amax(dim=(1, 2, 3)) <= high + 1e-5)
    assert not torch.allclose(out_images, images)


def test_flips_are_per_sample():
    images, labels = _batch((16, 8, 8))
    cfg = AugmentConfig(**{**STILL, "flip_axes": (-1,)})
    out_images, out_labels = augment(images, labels, cfg, _gen())
    flipped = [torch.equal(out_labels[i], labels[i].flip(-1)) for i in range(16)]
    kept = [torch.equal(out_labels[i], labels[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 16
    for i in range(16):
        expect = images[i].flip(-1) if flipped[i] and not kept[i] else images[i]
        assert torch.allclose(out_images[i], expect, atol=1e-6)


def test_bad_settings_raise():
    with pytest.raises(UdasegError, match="p must be"):
        AugmentConfig(p=1.5)
    with pytest.raises(UdasegError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))
    images, labels = _batch()
    with pytest.raises(UdasegError, match="flip_axes"):
        augment(images, labels, AugmentConfig(flip_axes=(2,)), _gen())
    assert AugmentConfig(rotation_deg=[-5, 10], scale=[1, 1]).rotation_deg == (-5, 10)


# --- random-network intensity re-rendering (GIN) ---------------------------------------------


def _regions(n=8, size=40):
    """Images made of three flat regions (-1, 0, 1) with their label maps."""
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, 12:28, 8:18] = 1
    labels[:, 12:28, 22:32] = 2
    return labels.float().unsqueeze(1) - 1.0, labels


def test_rerendering_keeps_labels_shapes_and_range_and_changes_contrast():
    images, labels = _regions()
    cfg = AugmentConfig(**{**STILL, "intensity_net": 1.0})
    out, out_labels = augment(images, labels, cfg, _gen(4))
    assert torch.equal(out_labels, labels)
    assert out.min() >= -1.0 - 1e-5 and out.max() <= 1.0 + 1e-5
    assert not torch.allclose(out, images)
    # the networks see at most 4 pixels around each one (four 3x3 layers), so away from the
    # region borders every region stays flat: anatomy is kept, only its intensity changes
    # (and from the zero-padded image edge)
    inside = {
        0: (slice(4, 8), slice(4, 36)),
        1: (slice(16, 24), slice(12, 14)),
        2: (slice(16, 24), slice(26, 28)),
    }
    means = torch.stack(
        [out[:, 0][(slice(None), *where)].mean(dim=(1, 2)) for where in inside.values()], 1
    )
    for region, where in inside.items():
        patch = out[:, 0][(slice(None), *where)]
        assert torch.allclose(patch, patch[:, :1, :1].expand_as(patch), atol=1e-4), region
    # a different network per sample: identical inputs come out differently, and the order of
    # the three intensities (-1 < 0 < 1 in every input) is not always kept
    assert not torch.allclose(out[0], out[1])
    orders = {tuple(m.argsort().tolist()) for m in means}
    assert len(orders) > 1


def test_rerendering_is_seeded_and_draws_the_same_whatever_the_outcome():
    from udaseg.data.augment import rerender

    images, _ = _regions()
    assert torch.equal(rerender(images, 0.7, _gen(5)), rerender(images, 0.7, _gen(5)))
    assert not torch.equal(rerender(images, 1.0, _gen(5)), rerender(images, 1.0, _gen(6)))
    assert rerender(images, 0.0, _gen(5)) is images
    gen_a, gen_b = _gen(9), _gen(9)
    rerender(images, 0.1, gen_a)
    rerender(images, 0.9, gen_b)
    assert torch.equal(gen_a.get_state(), gen_b.get_state())
    half = rerender(images, 0.5, _gen(2))
    same = [torch.equal(half[i], images[i]) for i in range(len(images))]
    assert 0 < sum(same) < len(images)  # the others come back bit-identical


def test_rerendering_a_volume_uses_one_network_for_all_its_slices():
    from udaseg.data.augment import rerender

    images, _ = _regions(n=2)
    volumes = images.unsqueeze(2).expand(2, 1, 5, 40, 40).contiguous()  # (N, C, D, H, W)
    out = rerender(volumes, 1.0, _gen(1))
    assert out.shape == volumes.shape
    assert torch.allclose(out[:, :, :1].expand_as(out), out, atol=1e-5)
    assert not torch.allclose(out, volumes)


def test_rerendering_settings_are_checked():
    with pytest.raises(UdasegError, match="intensity_net must be"):
        AugmentConfig(intensity_net=2.0)
    with pytest.raises(UdasegError, match="intensity_net_layers"):
        AugmentConfig(intensity_net=0.5, intensity_net_layers=0)
