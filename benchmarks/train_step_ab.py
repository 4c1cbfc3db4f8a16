"""One model's training step in two source trees (e.g. a commit before and after a speed change),
timed in one run on this machine.

Not a test. Each measurement is a fresh child process that imports udaseg from one tree and runs
``benchmarks/train_step.py``'s step of that tree (forward, the hparams' loss, backward, the
optimiser) after one warm-up step; the trees alternate (before, after, then after, before, ...)
so that a drifting machine load falls on both alike. Prints every step's seconds, the medians and
their ratio.

    git worktree add /tmp/before aec23ca
    python benchmarks/train_step_ab.py /tmp/before . --model dar-unet.v1 --size 32,256,256
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from train_step import plan_or_exit

CHILD = """
import json, sys, time
tree, config, precision, steps, threads = sys.argv[1:6]
sys.path[:0] = [tree, tree + "/benchmarks"]
import torch
torch.set_num_threads(int(threads))
import train_step
step, _ = train_step.build_step(json.loads(config), precision)
step()
seconds = []
for _ in range(int(steps)):
    started = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - started)
import udaseg
print(json.dumps({"seconds": seconds, "udaseg": udaseg.__file__}))
"""


def measure(tree: Path, config: dict, precision: str, steps: int, threads: int) -> list[float]:
    """Seconds of ``steps`` training steps in a child importing udaseg from ``tree``."""
    args = [str(tree.resolve()), json.dumps(config), precision, str(steps), str(threads)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: the step failed in {tree}:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["udaseg"]).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"error: {tree} did not provide udaseg (imported {result['udaseg']})")
    return result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="source tree (a checkout) measured first")
    parser.add_argument("after", type=Path, help="the other source tree")
    parser.add_argument("--model", default="dar-unet.v1", help="a registered model or translator")
    parser.add_argument("--size", default="32,256,256", help="input size, e.g. 32,256,256")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", choices=("bf16", "float32"), default="bf16")
    parser.add_argument("--rounds", type=int, default=2, help="children per tree")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per child")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    # the same config train_step.py builds (and checks) for the model
    config = plan_or_exit([args.model], paper=False, quick=False, batch=args.batch, size=args.size)[
        0
    ]
    trees = {"before": args.before, "after": args.after}
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        for name in trees if round_ % 2 == 0 else reversed(list(trees)):
            times = measure(trees[name], config, args.precision, args.steps, args.threads)
            seconds[name] += times
            print(f"{name:6s} {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        print(
            f"{name:6s} {args.model} {args.precision}: median {medians[name]:.2f} s/step of "
            f"{len(values)} ({', '.join(f'{t:.2f}' for t in values)}) in {trees[name]}"
        )
    print(f"before / after: {medians['before'] / medians['after']:.2f}x")


if __name__ == "__main__":
    main()
