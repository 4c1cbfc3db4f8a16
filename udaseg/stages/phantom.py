"""``udaseg phantom``: write a synthetic raw dataset plus the manifest that preprocesses it.

The phantom (``udaseg.data.phantom``) is laid out like a real download, so ``udaseg preprocess``
runs the same readers on it. The manifest written beside it (``dataset.yaml``) extends the real
dataset's manifest and only shrinks the grid, so the whole pipeline runs in minutes on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from udaseg import layout
from udaseg.config.phantom import PhantomConfig
from udaseg.data.phantom import check_options, write_phantom

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
    # the same 144 mm field of view as the real release, on 64x64 slices
    "mscmrseg": {
        "extends": "mscmrseg",
        "name": "phantom-mscmrseg",
        "geometry": {"inplane_mm": 2.25, "inplane_size": [64, 64]},
    },
}


def run(
    config: PhantomConfig, work: Path | None = None, *, force: bool = False, progress=None
) -> dict:
    """Write the phantom of ``config.task`` into ``config.out`` and ``out/dataset.yaml``; return
    a summary. It is raw data, not an artifact: ``work`` is not used.

    ``dataset.yaml`` is written last, so its presence with the same description marks a complete
    phantom of these settings: it is then left alone (``skipped``) unless ``force``, so the raw
    files keep their timestamps and the stages after it stay current.
    """
    # refuse bad options (the task included) before a complete phantom's marker is removed
    task, out, seed, size, n_cases = (
        config.task,
        Path(config.out),
        config.seed,
        config.size,
        config.n_cases,
    )
    check_options(task, size, seed, n_cases)
    path = out / layout.PHANTOM_MANIFEST
    text = _manifest_text(task, seed, size, n_cases)
    if not force and path.is_file() and path.read_text(encoding="utf-8") == text:
        return {"skipped": True, "manifest": str(path), "out": str(out), "cases": None}
    path.unlink(missing_ok=True)  # an unfinished rewrite must not look complete
    summary = write_phantom(task, out, seed=seed, size=size, n_cases=n_cases)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    cases = sum(summary["n_cases"].values())
    return {**summary, "cases": cases, "manifest": str(path), "out": str(out), "skipped": False}


def _manifest_text(task, seed, size, n_cases) -> str:
    """The manifest's text: nothing in it depends on where the phantom is, so a copied or moved
    phantom is still complete."""
    manifest = {
        **PHANTOM_MANIFESTS[task],
        "description": f"udaseg phantom ({task}, seed {seed}, size {size}, cases {n_cases}) in "
        f"the layout of {PHANTOM_MANIFESTS[task]['extends']}",
    }
    return (
        "# written by `udaseg phantom`; preprocess with (FOLDER: the folder of this file):\n"
        f"#   udaseg preprocess FOLDER/{layout.PHANTOM_MANIFEST} --raw FOLDER --work W\n"
        + yaml.safe_dump(manifest, sort_keys=False)
    )
