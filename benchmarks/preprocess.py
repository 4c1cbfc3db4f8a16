"""Preprocessing speed: udaseg per case vs SimpleITK merely reading and writing the same volumes.

Not a test: prints times measured in one run and their ratio (target: udaseg at most 2x the
read+write baseline). Uses the real abdominal data in ../shared/data when present, otherwise a
generated phantom.

    python benchmarks/preprocess.py                 # all real cases, 1 process
    python benchmarks/preprocess.py --cases 6       # a quicker subset
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from udaseg.data.manifest import load_manifest
from udaseg.data.pipeline import write_store
from udaseg.data.readers import find_cases

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "abdominal"


def dataset() -> tuple[str, Path, Path | None]:
    """(manifest, raw folder, temporary folder to delete) for the benchmark."""
    if SHARED.is_dir():
        return "abdominal-normalized", SHARED, None
    from udaseg.data.phantom import write_phantom

    tmp = Path(tempfile.mkdtemp())
    write_phantom("abdomen", tmp / "raw", seed=0)
    return "abdominal-normalized", tmp / "raw", tmp


def baseline(cases, out: Path) -> float:
    """Seconds SimpleITK takes to read each image+label and write them back as .nii.gz."""
    started = time.perf_counter()
    for case in cases:
        for path in (case.image, case.label):
            if path is not None:
                sitk.WriteImage(
                    sitk.ReadImage(str(path)), str(out / path.name), useCompression=True
                )
    return time.perf_counter() - started


def udaseg_time(manifest, domain, cases, out: Path) -> float:
    """Seconds udaseg takes to preprocess the same cases into an HDF5 store (one process)."""
    started = time.perf_counter()
    write_store(manifest, domain, cases, out / f"{domain.name}.h5", workers=1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=0, help="cases per domain (0 = all)")
    args = parser.parse_args()
    name, raw, tmp = dataset()
    manifest = load_manifest(name)
    work = Path(tempfile.mkdtemp())
    total_udaseg = total_base = 0.0
    n = 0
    try:
        for domain in manifest.domains.values():
            cases = find_cases(domain, raw)
            cases = cases[: args.cases] if args.cases else cases
            base = baseline(cases, work)
            ours = udaseg_time(manifest, domain, cases, work)
            n += len(cases)
            total_base += base
            total_udaseg += ours
            print(
                f"{domain.name}: {len(cases)} cases  udaseg {ours / len(cases):.3f} s/case  "
                f"SimpleITK read+write {base / len(cases):.3f} s/case  "
                f"ratio {ours / base:.2f}x"
            )
    finally:
        shutil.rmtree(work)
        if tmp:
            shutil.rmtree(tmp)
    print(
        f"all: {n} cases ({raw})  udaseg {total_udaseg / n:.3f} s/case  SimpleITK read+write "
        f"{total_base / n:.3f} s/case  ratio {total_udaseg / total_base:.2f}x (target <= 2x)"
    )


if __name__ == "__main__":
    main()
