"""Training-step throughput, peak memory and utilisation of the papers' segmenters on this machine.

Not a test: for each model at its paper's input size it measures, in one run,
- training steps per second and slices (2D) or voxels (3D) per second (forward + backward + Adam),
- peak resident memory of a fresh process doing only that,
- forward+backward FLOPs per step (``torch.utils.flop_counter``), and the achieved FLOP rate as a
  fraction of this machine's measured float32 matmul throughput (the utilisation figure).

    python benchmarks/train_step.py                       # sifa-encoder, deeplabv2, dar-unet
    python benchmarks/train_step.py --models unet2d.v1 --batch 8 --size 128,128 --steps 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

# model, batch size and input size as the papers train them
PAPER_SETTINGS = {
    "sifa-encoder.v1": (8, (256, 256)),
    "deeplabv2.v1": (1, (256, 256)),  # ADVENT/AttENT train DeepLab-v2 with batch 1
    "dar-unet.v1": (1, (32, 256, 256)),
}


def matmul_flops(seconds: float = 2.0, n: int = 1024) -> float:
    """Measured float32 matmul throughput of this machine (FLOP/s) with torch's BLAS, n x n."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - started)


def measure(name: str, batch: int, size: tuple[int, ...], steps: int) -> dict:
    """Run in a fresh process (so ru_maxrss is this model's peak): time steps, count FLOPs."""
    import resource

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from udaseg.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, *size)
    y = torch.randint(0, 5, (batch, *size))

    def step() -> None:
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out["logits"], y)
        for aux in out["aux"]:
            loss = loss + 0.1 * torch.nn.functional.cross_entropy(aux, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocator, oneDNN kernels)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    units = batch if len(size) == 2 else batch * int(torch.tensor(size).prod())
    return {
        "model": name,
        "batch": batch,
        "size": list(size),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "seconds_per_step": seconds,
        "units_per_second": units / seconds,
        "unit": "slices" if len(size) == 2 else "voxels",
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / seconds / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(PAPER_SETTINGS))
    parser.add_argument("--batch", type=int, help="override the papers' batch size")
    parser.add_argument("--size", help="override the input size, e.g. 128,128")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, batch, size = json.loads(args.child)
        print(json.dumps(measure(name, batch, tuple(size), args.steps)))
        return
    # the best of three sizes: small matrices underestimate what the BLAS can sustain
    peak = max(matmul_flops(1.0, n) for n in (1024, 2048, 4096))
    print(
        f"machine: float32 matmul {peak / 1e9:.1f} GFLOP/s (best of 1024/2048/4096, "
        "measured now, torch BLAS)"
    )
    for name in args.models:
        batch, size = PAPER_SETTINGS.get(name, (8, (256, 256)))
        batch = args.batch or batch
        size = tuple(int(s) for s in args.size.split(",")) if args.size else size
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                json.dumps([name, batch, list(size)]),
                "--steps",
                str(args.steps),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{r['model']:<18} batch {r['batch']} x {'x'.join(map(str, r['size']))}: "
            f"{r['seconds_per_step']:.2f} s/step, {r['units_per_second']:.3g} {r['unit']}/s, "
            f"peak memory {r['peak_rss_gb']:.2f} GB, {r['gflop_per_step']:.1f} GFLOP/step, "
            f"{r['achieved_gflops']:.1f} GFLOP/s = {r['achieved_gflops'] * 1e9 / peak:.0%} "
            f"of matmul peak ({r['parameters_m']:.1f} M parameters)"
        )


if __name__ == "__main__":
    main()
