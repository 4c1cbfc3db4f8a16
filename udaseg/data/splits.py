"""Train / validation / test splits of a domain's cases (written as ``splits.json``)."""

from __future__ import annotations

import hashlib

import numpy as np

from udaseg.data.manifest import DatasetManifest, Domain


def make_splits(manifest: DatasetManifest, domain: Domain, case_ids: list[str]) -> dict:
    """Split ``case_ids`` as the manifest says.

    Published test ids (``domain.test_ids``) go to ``test``; ids published but not on disk are
    listed in ``test_absent`` (e.g. the held-out SIFA cases missing from a training-only copy).
    Without published ids, ``splits.test_fraction`` of the cases is drawn for test. The domain's
    fixed ``val_ids`` (those on disk; the others are listed in ``val_absent``), or else a seeded
    ``splits.val_fraction`` of the remaining cases, form ``val``; the rest is ``train``.
    The draw depends only on the seed and the sorted case ids, so with ``paired_cases`` every
    sequence of a patient lands in the same split.
    """
    spec = manifest.splits
    present = list(case_ids)
    test = [c for c in present if c in domain.test_ids]
    rest = [c for c in present if c not in test]
    rng = np.random.default_rng(_seed(spec.seed, manifest.name, domain.name, spec.paired_cases))
    if not domain.test_ids and spec.test_fraction > 0:
        order = rng.permutation(len(rest))
        n_test = int(round(spec.test_fraction * len(rest)))
        test = sorted((rest[i] for i in order[:n_test]), key=present.index)
        rest = [c for c in rest if c not in test]
    if domain.val_ids:
        val = [c for c in rest if c in domain.val_ids]
    else:
        order = rng.permutation(len(rest))
        n_val = int(round(spec.val_fraction * len(rest)))
        val = sorted((rest[i] for i in order[:n_val]), key=present.index)
    train = [c for c in rest if c not in val]
    return {
        "train": train,
        "val": val,
        "test": test,
        "test_absent": [c for c in domain.test_ids if c not in present],
        "val_absent": [c for c in domain.val_ids if c not in present],
        "seed": spec.seed,
        "source": spec.source,
    }


def _seed(seed: int, dataset: str, domain: str, paired: bool) -> int:
    # domains of one dataset get different draws unless they are sequences of the same patients
    key = f"{dataset}/{seed}" if paired else f"{dataset}/{domain}/{seed}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
