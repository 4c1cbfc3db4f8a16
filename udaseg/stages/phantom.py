"""``udaseg phantom``: write a synthetic raw dataset plus the manifest that preprocesses it.

The phantom (``udaseg.data.phantom``) is laid out like a real download, so ``udaseg preprocess``
runs the same readers on it. The manifest written beside it (``dataset.yaml``) extends the real
dataset's manifest and only shrinks the grid, so the whole pipeline runs in minutes on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from udaseg.data.phantom import write_phantom
from udaseg.errors import look_up_option

# per task: the built-in manifest its layout follows, and the smaller grid used for the demo
PHANTOM_MANIFESTS = {
    "abdomen": {
        "extends": "abdominal-normalized",
        "name": "phantom-abdomen",
        "geometry": {"inplane_mm": 2.5, "inplane_size": [64, 64]},
    },
    "cardiac": {
        "extends": "mmwhs",
        "name": "phantom-cardiac",
        "geometry": {"inplane_mm": 2.0, "through_plane_mm": 2.0, "inplane_size": [64, 64]},
    },
}


def run(
    task: str, out: Path, *, seed: int = 0, size: str = "small", n_cases: int | None = None
) -> dict:
    """Write the phantom for ``task`` into ``out`` and ``out/dataset.yaml``; return a summary."""
    look_up_option(task, PHANTOM_MANIFESTS, what="phantom task")
    out = Path(out)
    summary = write_phantom(task, out, seed=seed, size=size, n_cases=n_cases)
    manifest = {
        **PHANTOM_MANIFESTS[task],
        "description": f"udaseg phantom ({task}, seed {seed}, size {size}) in the layout of "
        f"{PHANTOM_MANIFESTS[task]['extends']}",
    }
    path = out / "dataset.yaml"
    tmp = path.with_name(".dataset.yaml.tmp")
    tmp.write_text(
        "# written by `udaseg phantom`; preprocess with:\n"
        f"#   udaseg preprocess {path} --raw {out} --work W\n"
        + yaml.safe_dump(manifest, sort_keys=False)
    )
    tmp.replace(path)
    cases = sum(summary["n_cases"].values())
    return {**summary, "cases": cases, "manifest": str(path), "out": str(out)}
