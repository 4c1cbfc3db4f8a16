"""Intensity re-mappings of :mod:`udaseg.data.augment`: location-scale (global and per class) and
IPA's blend of two GIN renderings."""

from __future__ import annotations

import pytest
import torch

# STILL: no geometry, no gamma, so the intensity re-mapping acts alone
from tests.data.test_augment import STILL, _gen
from udaseg.data.augment import AugmentConfig, augment
from udaseg.errors import UdasegError


def _ramp_batch(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of a left-to-right ramp in [-1, 1]; labels: class 1 in the top half, 2 in the
    bottom-left quarter, background elsewhere, so every class spans the same intensities."""
    ramp = torch.linspace(-1, 1, size).expand(size, size)
    images = ramp.expand(n, 1, size, size).clone()
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, : size // 2] = 1
    labels[:, size // 2 :, : size // 2] = 2
    return images, labels


def _as_function_of_input(image: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> bool:
    """True where, inside ``mask``, equal input intensities map to equal outputs."""
    values = {}
    for a, b in zip(image[mask].tolist(), out[mask].tolist(), strict=True):
        if a in values and abs(values[a] - b) > 1e-5:
            return False
        values[a] = b
    return True


def test_global_location_scale_is_one_curve_for_the_whole_image():
    images, labels = _ramp_batch()
    cfg = AugmentConfig(**STILL, location_scale=1.0, location_scale_local=0.0)
    out, out_labels = augment(images, labels, cfg, _gen(1))
    assert torch.equal(out_labels, labels)
    assert not torch.allclose(out, images)
    everywhere = torch.ones_like(labels[0], dtype=torch.bool)
    for i in range(len(images)):
        assert _as_function_of_input(images[i, 0], out[i, 0], everywhere)
    # inside the image's own range
    assert out.min() >= images.min() - 1e-6 and out.max() <= images.max() + 1e-6


def test_local_location_scale_gives_each_class_its_own_curve():
    images, labels = _ramp_batch()
    cfg = AugmentConfig(**STILL, location_scale=1.0, location_scale_local=1.0)
    out, _ = augment(images, labels, cfg, _gen(2))
    differs = 0
    for i in range(len(images)):
        for c in range(3):
            assert _as_function_of_input(images[i, 0], out[i, 0], labels[i] == c)
        # the same input column in class 1 and in class 2 maps to different values
        differs += not torch.allclose(out[i, 0, 0, :16], out[i, 0, -1, :16], atol=1e-3)
    assert differs == len(images)


def test_local_location_scale_without_labels_falls_back_to_global():
    images, _ = _ramp_batch()
    cfg = AugmentConfig(**STILL, location_scale=1.0, location_scale_local=1.0)
    out, labels = augment(images, None, cfg, _gen(3))
    assert labels is None
    everywhere = torch.ones(32, 32, dtype=torch.bool)
    assert all(_as_function_of_input(images[i, 0], out[i, 0], everywhere) for i in range(6))


def test_location_scale_draws_do_not_depend_on_the_outcome():
    images, labels = _ramp_batch()
    cfg = AugmentConfig(**STILL, location_scale=0.5)
    gen_a, gen_b = _gen(4), _gen(4)
    augment(images, labels, cfg, gen_a)
    augment(images * 0.5, labels.flip(-1), cfg, gen_b)  # other content, same shapes
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def test_location_scale_is_seeded():
    images, labels = _ramp_batch()
    cfg = AugmentConfig(**STILL, location_scale=1.0)
    a, _ = augment(images, labels, cfg, _gen(5))
    b, _ = augment(images, labels, cfg, _gen(5))
    c, _ = augment(images, labels, cfg, _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_location_scale_on_volumes_uses_one_curve_per_class_across_slices():
    images, labels = _ramp_batch(n=2)
    volumes = images.unsqueeze(2).repeat(1, 1, 3, 1, 1)  # (2, 1, 3, 32, 32)
    volume_labels = labels.unsqueeze(1).repeat(1, 3, 1, 1)
    cfg = AugmentConfig(**STILL, location_scale=1.0, location_scale_local=1.0)
    out, _ = augment(volumes, volume_labels, cfg, _gen(7))
    assert out.shape == volumes.shape
    assert torch.allclose(out[:, :, 0], out[:, :, 2])


def _gin(ipa: float) -> AugmentConfig:
    return AugmentConfig(**STILL, intensity_net=1.0, ipa=ipa)


def test_ipa_blends_two_renderings_smoothly():
    images, labels = _ramp_batch()
    gin, _ = augment(images, labels, _gin(0.0), _gen(8))
    ipa, out_labels = augment(images, labels, _gin(1.0), _gen(8))
    assert torch.equal(out_labels, labels)
    # the first network's draws come first, so where IPA is off the two would agree; IPA is on
    assert not torch.allclose(gin, ipa)
    # inside the image's own range, finite
    assert torch.isfinite(ipa).all()
    assert ipa.min() >= images.min() - 1e-6 and ipa.max() <= images.max() + 1e-6


def test_ipa_mapping_varies_across_the_image():
    """GIN maps equal intensities to equal outputs over the image (up to its 3x3 kernels); IPA's
    spatial blend of two mappings does not: along a constant column the output changes."""
    size = 32
    images = torch.zeros(8, 1, size, size)
    images[:, :, :, size // 2 :] = 1.0  # two flat halves
    images[:, :, :, : size // 2] = -1.0
    gin, _ = augment(images, None, _gin(0.0), _gen(9))
    ipa, _ = augment(images, None, _gin(1.0), _gen(9))
    inner = slice(4, size - 4)  # away from the edge the 3x3 kernels see

    def spread(x):
        return x[:, 0, inner, 4 : size // 2 - 4].std(dim=(1, 2))

    assert spread(gin).max() < 1e-4
    assert (spread(ipa) > 1e-3).float().mean() >= 0.5


def test_ipa_needs_the_intensity_network():
    with pytest.raises(UdasegError, match="ipa"):
        AugmentConfig(ipa=0.5)


@pytest.mark.parametrize("field", ["location_scale", "location_scale_local", "ipa"])
def test_probabilities_out_of_range_are_refused(field):
    with pytest.raises(UdasegError, match=field):
        AugmentConfig(**{field: 1.5, "intensity_net": 1.0})
