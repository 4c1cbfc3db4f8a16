"""Augmentation speed: one batch of the training augmentations on one CPU thread.

Not a test: prints the best of a few runs per batch, beside one forward + backward pass of the
default 2D segmenter on the same batch, so the ratio says whether augmentation could slow
training down (it should cost a small fraction of a step).

    python benchmarks/augment.py
"""

from __future__ import annotations

import time

import torch

from udaseg.data.augment import AugmentConfig, augment
from udaseg.models.registry import create_model


def best(fn, repeats: int = 5) -> float:
    """Fastest of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    # one thread: other processes on the cores make OpenMP's spinning threads measure the load
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(8, 1, 128, 128), torch.randint(0, 5, (8, 128, 128))
    volumes = torch.randn(2, 1, 32, 128, 128)
    volume_labels = torch.randint(0, 5, (2, 32, 128, 128))
    affine = AugmentConfig(p=1.0)
    elastic = AugmentConfig(p=1.0, elastic_alpha=3.0, elastic_sigma=16.0)
    model = create_model("unet2d.v1", in_channels=1, num_classes=5)

    def step() -> None:
        model.zero_grad()
        model(images)["logits"].float().mean().backward()

    slices = best(lambda: augment(images, labels, affine, generator))
    patches = best(lambda: augment(volumes, volume_labels, elastic, generator))
    training = best(step, repeats=3)
    print(f"2D affine, 8 x 128x128:          {1000 * slices:8.1f} ms")
    print(f"3D affine + elastic, 2 x 32x128x128: {1000 * patches:8.1f} ms")
    print(f"unet2d.v1 forward+backward, 8 x 128x128: {1000 * training:8.1f} ms")
    print(f"2D augmentation / training step: {slices / training:.3f}")


if __name__ == "__main__":
    main()
