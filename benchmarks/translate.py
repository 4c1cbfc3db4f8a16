"""Translator throughput and peak memory on this machine, for every registered translation method.

Not a test: for each method at its full (paper) width and 256 x 256 slices it measures, in one run,
- training iterations per second: ``train_step`` on an unpaired batch of the hparams' batch size
  (all of the method's updates: generators, discriminators, EMA), after one warm-up iteration;
- translate-apply slices per second: batched ``translate`` under ``torch.no_grad()`` as
  ``udaseg translate apply`` runs it (in the encoded style of a target batch for methods with
  style codes, the default style otherwise);
- peak resident memory of a fresh process doing only that (``resource.getrusage`` ru_maxrss).

    python benchmarks/translate.py                                  # all methods, 256 x 256
    python benchmarks/translate.py --methods cyclegan.v1 --size 64,64 --steps 2 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(name: str, size: tuple[int, int], batch: int | None, steps: int, apply_batch: int,
            apply_batches: int, device: str) -> dict:  # fmt: skip
    """Run in a fresh process (so ru_maxrss is this method's peak): time training and apply."""
    import functools
    import resource

    import torch

    from udaseg.training import loop
    from udaseg.translation.registry import constructor_kwargs, create_translator, translator_spec

    torch.manual_seed(0)
    spec = translator_spec(name)
    hparams = dict(spec.hparams)
    batch = batch or int(hparams["batch_size"])
    runtime = loop.setup_runtime(device, amp=True, channels_last=False)
    translator = create_translator(name, **constructor_kwargs(name, hparams, {})).to(device)
    optimizers = translator.optimizers(hparams)
    # the translator contract: a zero-argument callable giving a fresh context per update
    autocast = functools.partial(loop.autocast, runtime)

    def images(n: int) -> torch.Tensor:
        return torch.rand(n, 1, *size, device=device) * 2 - 1  # the stores' range [-1, 1]

    source, target = images(batch), images(batch)

    def sync() -> None:
        if runtime.cuda:
            torch.cuda.synchronize()

    translator.train()
    translator.train_step(source, target, optimizers, autocast)  # warm-up (allocator, kernels)
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        translator.train_step(source, target, optimizers, autocast)
    sync()
    train_seconds = (time.perf_counter() - started) / steps

    translator.eval()
    slices = images(apply_batch)
    with torch.no_grad(), autocast():
        style = translator.encode_style(images(apply_batch)) if spec.has_style_codes else None
        translator.translate(slices, style)  # warm-up
        sync()
        started = time.perf_counter()
        for _ in range(apply_batches):
            translator.translate(slices, style)
        sync()
    apply_seconds = (time.perf_counter() - started) / apply_batches
    return {
        "method": name,
        "has_style_codes": spec.has_style_codes,
        "device": device,
        "batch": batch,
        "size": list(size),
        "parameters_m": sum(p.numel() for p in translator.parameters()) / 1e6,
        "seconds_per_iteration": train_seconds,
        "iterations_per_second": 1.0 / train_seconds,
        "apply_batch": apply_batch,
        "apply_slices_per_second": apply_batch / apply_seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1e9 if runtime.cuda else None,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--size", default="256,256", help="slice size H,W (default 256,256)")
    parser.add_argument("--batch", type=int, help="override the hparams' training batch size")
    parser.add_argument("--steps", type=int, default=2, help="timed training iterations")
    parser.add_argument("--apply-batch", type=int, default=16, help="slices per apply pass")
    parser.add_argument("--apply-batches", type=int, default=3, help="timed apply passes")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--json", action="store_true", help="print one JSON line per method")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(s) for s in args.size.split(","))
    if args.child:
        result = measure(
            args.child, size, args.batch, args.steps, args.apply_batch, args.apply_batches,
            args.device,
        )  # fmt: skip
        print(json.dumps(result))
        return
    from udaseg.translation.registry import list_translators

    methods = args.methods or list_translators()
    forwarded = ["--size", args.size, "--steps", str(args.steps), "--device", args.device]
    forwarded += ["--apply-batch", str(args.apply_batch)]
    forwarded += ["--apply-batches", str(args.apply_batches)]
    forwarded += ["--batch", str(args.batch)] if args.batch else []
    for name in methods:
        done = subprocess.run(
            [sys.executable, __file__, "--child", name, *forwarded],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            # a negative code is a signal: SIGKILL (-9) here is almost always the OOM killer
            why = f"killed by signal {-done.returncode}" if done.returncode < 0 else "failed"
            print(f"{name}: {why}\n{done.stderr.strip()[-1500:]}", file=sys.stderr, flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        print(
            f"{r['method']:<22} {r['device']} {'x'.join(map(str, r['size']))}: train batch "
            f"{r['batch']} {r['iterations_per_second']:.3g} it/s "
            f"({r['seconds_per_iteration']:.2f} s/it), apply {r['apply_slices_per_second']:.3g} "
            f"slices/s (batch {r['apply_batch']}), peak memory {r['peak_rss_gb']:.2f} GB RSS"
            + (f" / {r['peak_cuda_gb']:.2f} GB CUDA" if r["peak_cuda_gb"] is not None else "")
            + f", {r['parameters_m']:.1f} M parameters, {r['torch_threads']} threads",
            flush=True,
        )


if __name__ == "__main__":
    main()
