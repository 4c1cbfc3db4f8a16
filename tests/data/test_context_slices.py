"""2.5D input (``segment-train --context-slices K``): training batches and inference both give a
2D model each slice with its K neighbours on each side, the same way.

The synthetic volumes hold 100 x case number + slice number as every voxel's value, so a
sample's channels name the case and the slices they came from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from udaseg.data.sampling import SliceSampler, Source, VolumeBank
from udaseg.data.store import Store, StoreWriter
from udaseg.errors import UdasegError
from udaseg.inference import predict_volume
from udaseg.inference.models import context_slices, input_channels, resolve_model
from udaseg.inference.options import inference_options
from udaseg.models.registry import create_model, model_spec

SLICES = (6, 3)  # per case


def numbered_store(path):
    """A store of cases ``c0``, ``c1`` (SLICES slices of 8 x 8) whose slice k of case i has
    image value 100 i + k and label k + 1."""
    with StoreWriter(
        path, dataset="d", domain="t", modality="CT", view="axial", classes=["a"], labelled=True
    ) as writer:
        for i, n in enumerate(SLICES):
            numbers = np.arange(n)[:, None, None] * np.ones((n, 8, 8))
            image, label = (100 * i + numbers).astype(np.float32), (numbers + 1).astype(np.uint8)
            writer.add_case(f"c{i}", image, label, {})
    return Store(path)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("k", [1, 2])
def test_a_sample_holds_its_slice_and_k_neighbours_clipped_at_the_volume_ends(
    tmp_path, k, in_memory
):
    store = numbered_store(tmp_path / "s.h5")
    budget = 1e9 if in_memory else 0  # 0: every stack is read from the file
    bank = VolumeBank(
        [Source(store, tuple(store.case_ids))], need_labels=True, memory_budget=budget
    )
    assert bank.in_memory is in_memory
    sampler = SliceSampler(bank, (8, 8), 64, np.random.default_rng(0), context_slices=k)
    images, labels = sampler()
    assert images.shape == (64, 2 * k + 1, 8, 8) and images.dtype == np.float32
    assert labels.shape == (64, 8, 8)
    drawn = set()
    for image, label in zip(images, labels, strict=True):
        assert np.all(image == image[:, :1, :1])  # one crop for all channels
        case, centre = int(image[k, 0, 0]) // 100, int(label[0, 0]) - 1  # label: centre slice's
        expected = np.clip(np.arange(centre - k, centre + k + 1), 0, SLICES[case] - 1)
        assert (image[:, 0, 0] - 100 * case).tolist() == expected.tolist()
        drawn.add((case, centre))
    assert {(0, 0), (0, 5), (1, 0), (1, 2)} <= drawn  # both ends of both volumes were drawn


def test_no_context_gives_the_plain_2d_batches(tmp_path):
    store = numbered_store(tmp_path / "s.h5")
    bank = VolumeBank([Source(store, tuple(store.case_ids))], need_labels=True)
    plain = SliceSampler(bank, (6, 6), 8, np.random.default_rng(3))()
    zero = SliceSampler(bank, (6, 6), 8, np.random.default_rng(3), context_slices=0)()
    stacked = SliceSampler(bank, (6, 6), 8, np.random.default_rng(3), context_slices=1)()
    assert plain[0].shape == (8, 1, 6, 6)
    np.testing.assert_array_equal(plain[0], zero[0])
    np.testing.assert_array_equal(plain[1], zero[1])
    # the same draws: only the channels differ, the centre channel is the plain slice
    np.testing.assert_array_equal(stacked[0][:, 1:2], plain[0])
    np.testing.assert_array_equal(stacked[1], plain[1])


def tiny_2_5d_model(k: int, classes: int = 3):
    torch.manual_seed(0)
    spec = model_spec("unet2d.v1")
    return create_model("unet2d.v1", in_channels=2 * k + 1, num_classes=classes, **spec.tiny).eval()


def by_hand(model, volume: np.ndarray, k: int, flip_dims: tuple[int, ...] = ()) -> np.ndarray:
    """(C, S, H, W) softmax of the model on the hand-stacked (S, 2k+1, H, W) slices."""
    n = volume.shape[0]
    stacks = np.stack([volume[np.clip(np.arange(s - k, s + k + 1), 0, n - 1)] for s in range(n)])
    x = torch.from_numpy(stacks)
    with torch.no_grad():
        x = x.flip(flip_dims) if flip_dims else x
        probabilities = model(x)["logits"].softmax(1)
        probabilities = probabilities.flip(flip_dims) if flip_dims else probabilities
    return probabilities.transpose(0, 1).numpy()


def test_inference_feeds_the_stacks_model_json_asks_for():
    k = 1
    volume = np.random.default_rng(0).normal(size=(5, 32, 32)).astype(np.float32)
    model = tiny_2_5d_model(k)
    info = {"name": "unet2d.v1", "dims": 2, "patch_size": [32, 32], "in_channels": 3}
    info["context_slices"] = k
    options = inference_options(info, "cpu", batch_size=2, amp=False)
    assert options["in_channels"] == 3
    expected = by_hand(model, volume, k)
    np.testing.assert_allclose(predict_volume(model, volume, **options), expected, atol=1e-5)
    # test-time flips (in-plane for 2D models): each flipped stack, flipped back, averaged
    tta = inference_options(info, "cpu", batch_size=2, amp=False, tta=True)
    flips = [(), (2,), (3,), (2, 3)]  # (S, channels, H, W) dims of the volume's H, W axes
    expected = np.mean([by_hand(model, volume, k, f) for f in flips], axis=0)
    np.testing.assert_allclose(predict_volume(model, volume, **tta), expected, atol=1e-5)


def test_model_json_layout_reading_and_contradictions(tmp_path):
    assert context_slices({"in_channels": 1}) == 0  # a model.json from before the option
    assert context_slices({"in_channels": 5, "context_slices": 2}) == 2
    assert input_channels({"dims": 3, "in_channels": 1, "context_slices": 0}) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    info = {"name": "unet2d.v1", "dims": 2, "in_channels": 1, "context_slices": 1}
    (bad / "model.json").write_text(json.dumps(info))
    with pytest.raises(UdasegError, match="context_slices 1 needs 3 input channels") as caught:
        resolve_model(bad, "final")
    assert str(bad) in str(caught.value)
