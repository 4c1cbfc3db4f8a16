"""Is each adaptation run's adversarial game alive? Reads ``W/adapt/*/metrics.jsonl``.

For every discriminator loss of every run (keys ``d``, ``d1``, ``d_t``, ``d_feat_s``, ...), prints
its mean over the first and the last fifth of the logged steps and a verdict:

- collapsed: the discriminator wins outright (loss under 0.05 for BCE, 0.01 for LSGAN), so the
  segmenter gets no useful gradient from it;
- diverged: the loss is not finite or above 5 (BCE) / 1 (LSGAN) at the end;
- playing: otherwise. At BCE equilibrium a discriminator's loss is log 2 = 0.69 per side (our
  discriminator losses average the real and fake terms), at LSGAN equilibrium 0.25.

Usage: ``python benchmarks/adversarial_game.py W [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from udaseg import layout

THRESHOLDS = {"bce": (0.05, 5.0), "lsgan": (0.01, 1.0)}


def discriminator_keys(rows: list[dict]) -> list[str]:
    keys = {k for row in rows for k in row if k == "d" or k.startswith(("d_", "d1", "d2", "d3"))}
    return sorted(k for k in keys if k not in ("d_lr",))


def verdict(first: float, last: float, kind: str) -> str:
    low, high = THRESHOLDS.get(kind, THRESHOLDS["bce"])
    if not math.isfinite(last) or last > high:
        return "diverged"
    if last < low:
        return "collapsed"
    return "playing"


def summarise(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / layout.METRICS).read_text().splitlines()]
    rows = [row for row in rows if "val" not in row]
    hparams = json.loads((run / layout.MODEL_JSON).read_text()).get("hparams", {})
    kind = hparams.get("gan_loss", "bce")
    fifth = max(1, len(rows) // 5)
    result = {"run": run.name, "steps": rows[-1]["step"] if rows else 0, "gan_loss": kind}
    for key in discriminator_keys(rows):
        values = [float(row[key]) for row in rows if key in row]
        first = sum(values[:fifth]) / len(values[:fifth])
        last = sum(values[-fifth:]) / len(values[-fifth:])
        result[key] = {"first": first, "last": last, "verdict": verdict(first, last, kind)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    adapt = layout.stage_dir(args.work, layout.ADAPT)
    runs = sorted(p for p in adapt.glob("*") if (p / layout.METRICS).is_file())
    results = [summarise(run) for run in runs if not run.name.endswith(layout.PARTIAL_SUFFIX)]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for result in results:
        print(f"{result['run']} ({result['steps']} steps, {result['gan_loss']})")
        for key, value in result.items():
            if isinstance(value, dict):
                print(
                    f"  {key:12s} first {value['first']:.3f}  last {value['last']:.3f}  "
                    f"{value['verdict']}"
                )


if __name__ == "__main__":
    main()
