"""`udaseg segment-train` training options: flips, location-scale, IPA and the weight average."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import KillAt
from tests.stages.test_segment_train import (
    config,
    log_without_times,
    same_weights,
    weights,
)
from tests.stages.test_segment_train import stores as stores  # noqa: F401 (a fixture)
from udaseg import artifacts
from udaseg.errors import UdasegError
from udaseg.stages import segment_train
from udaseg.training.checkpoint import load_checkpoint


@pytest.mark.parametrize(
    "option",
    [{"flip": True}, {"location_scale": 1.0}, {"intensity_net": 1.0, "ipa": 1.0}, {"ema": 0.9}],
    ids=["flip", "location-scale", "ipa", "ema"],
)
def test_each_option_changes_the_run_and_repeats_with_the_seed(stores, tmp_path, option):
    source, _ = stores
    base = {"intensity_net": 1.0} if "ipa" in option else {}
    plain = segment_train.run(config(source, name="plain", **base), tmp_path / "w")
    first = segment_train.run(config(source, name="a", **option), tmp_path / "w")
    segment_train.run(config(source, name="b", **option), tmp_path / "w")
    runs = tmp_path / "w" / "segment"
    assert same_weights(weights(runs / "a"), weights(runs / "b"))
    assert not same_weights(weights(runs / "a"), weights(runs / "plain"))
    assert first.config_hash != plain.config_hash
    for key, value in option.items():
        assert artifacts.load_manifest(runs / "a").config[key] == value


def test_ema_publishes_the_average_and_resumes_exactly(stores, tmp_path):
    source, _ = stores
    segment_train.run(config(source, name="whole", ema=0.9), tmp_path / "w")
    with pytest.raises(KeyboardInterrupt):
        segment_train.run(config(source, name="cut", ema=0.9), tmp_path / "w", progress=KillAt(5))
    segment_train.run(config(source, name="cut", ema=0.9, resume=True), tmp_path / "w")
    runs = tmp_path / "w" / "segment"
    assert same_weights(weights(runs / "whole"), weights(runs / "cut"))
    assert log_without_times(runs / "whole" / "metrics.jsonl") == log_without_times(
        runs / "cut" / "metrics.jsonl"
    )
    final = load_checkpoint(runs / "whole" / "checkpoint_final.pt")
    online = final["training"]["modules"][segment_train.ONLINE]
    average = final["state_dict"]
    assert average.keys() == online.keys()
    # the published weights are the average, not the last step's
    assert not same_weights(average, online)


def test_update_ema_ramps_up_then_averages():
    online = torch.nn.Linear(2, 1)
    average = copy.deepcopy(online)
    with torch.no_grad():
        online.weight.fill_(1.0)
        average.weight.fill_(0.0)
    segment_train.update_ema(average, online, decay=0.99, step=0)  # d = 1/10
    assert torch.allclose(average.weight, torch.full_like(average.weight, 0.9))
    with torch.no_grad():
        average.weight.fill_(0.0)
    segment_train.update_ema(average, online, decay=0.99, step=10_000)  # d = 0.99
    assert torch.allclose(average.weight, torch.full_like(average.weight, 0.01))


def test_options_that_need_others_are_refused_before_anything_is_written(stores, tmp_path):
    source, _ = stores
    with pytest.raises(UdasegError, match="--no-augment"):
        segment_train.run(config(source, name="x", flip=True, augment=False), tmp_path / "w")
    with pytest.raises(UdasegError, match="--intensity-net"):
        segment_train.run(config(source, name="x", ipa=0.5), tmp_path / "w")
    assert not (tmp_path / "w" / "segment").exists()


def test_stacked_slices_are_augmented_as_one_volume(stores, tmp_path, monkeypatch):
    """2.5D stacks go through augmentation as (B, 1, 2K+1, H, W) volumes, so every slice of a
    stack gets the same transform, tone curve and rendering (identical slices stay identical)."""
    from udaseg.data import augment as augment_module

    source, _ = stores
    seen = []
    real = augment_module.augment

    def spy(images, labels, cfg, gen):
        out = real(images, labels, cfg, gen)
        seen.append((images.shape, labels.shape, out))
        return out

    monkeypatch.setattr(augment_module, "augment", spy)
    options = dict(context_slices=1, intensity_net=1.0, ipa=0.5, location_scale=1.0, flip=True)
    segment_train.run(config(source, name="stack", **options), tmp_path / "w")
    assert seen
    for image_shape, label_shape, _ in seen:
        assert len(image_shape) == 5 and image_shape[1:3] == (1, 3)
        assert label_shape == image_shape[:1] + image_shape[2:]
    # the same draws on a stack of three identical slices keep them identical
    images, labels, _ = seen[0][2][0][:2], seen[0][2][1][:2], None
    flat = images[:, :, 1:2].expand(-1, -1, 3, -1, -1).contiguous()
    cfg = augment_module.AugmentConfig(intensity_net=1.0, ipa=1.0, location_scale=1.0, p=1.0)
    out, _ = real(flat, labels, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, 0], out[:, :, 1]) and torch.equal(out[:, :, 1], out[:, :, 2])
