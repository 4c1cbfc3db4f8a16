"""The workspace layout: every folder and fixed file name a stage reads or writes under ``--work``.

Nothing else in udaseg spells these names; a stage asks here where its artifact goes::

    W/preprocessed/<dataset>__<domain>/   store.h5, splits.json, fingerprint.json, manifest.json
    W/translate/<run>/                    checkpoint_{latest,final}.pt, model.json, metrics.jsonl,
                                          samples/*.png
    W/styles/<run>/                       centroids.npy, codes.npy, members.json, styles.png
    W/translated/<run>/                   store.h5 (K styles per source case, labels kept)
    W/segment/<run>/  W/adapt/<run>/      checkpoint_{latest,best,final}.pt, model.json,
                                          metrics.jsonl; adapt also extras/
    W/pseudo/<run>/                       store.h5 (pseudo-labelled target)
    W/predict/<run>/                      <case>.nii.gz in the original geometry,
                                          labels.itksnap.txt, labels.ctbl
    W/evaluate/<run>/                     per_case.csv, summary.json, table.md
    W/report/                             report.html, report.md, figures/
    W/export/nnunet/DatasetXXX_Name/      an nnU-Net v2 raw dataset (``udaseg export nnunet``)
    W/runs/<pipeline>/                    summary.json, comparison.md (``udaseg run``)

Every artifact folder also holds ``manifest.json`` (see :mod:`udaseg.artifacts`).
"""

from __future__ import annotations

import re
from pathlib import Path

from udaseg.errors import UdasegError

# one folder per stage under the workspace root
PREPROCESSED = "preprocessed"
TRANSLATE = "translate"
STYLES = "styles"
TRANSLATED = "translated"
SEGMENT = "segment"
ADAPT = "adapt"
PSEUDO = "pseudo"
PREDICT = "predict"
EVALUATE = "evaluate"
REPORT = "report"
RUNS = "runs"
# hand-offs to other tools: one folder per tool under ``W/export``
NNUNET_EXPORT = "export/nnunet"

# folders that hold one artifact per run (``W/<folder>/<run>/``); the report is ``W/report/``
RUN_FOLDERS = (
    PREPROCESSED,
    TRANSLATE,
    STYLES,
    TRANSLATED,
    SEGMENT,
    ADAPT,
    PSEUDO,
    PREDICT,
    EVALUATE,
    RUNS,
    NNUNET_EXPORT,
)

# identity parts of a default run name are joined with this (``dataset__domain``)
JOIN = "__"

# what kind of artifact a stage (manifest "stage") writes: models, and stores with the command
# that rebuilds each (named in "rebuild it with ..." hints)
MODEL_STAGES = ("segment-train", "adapt")
STORE_STAGES = {
    "preprocess": "preprocess",
    "translate-apply": "translate apply",
    "pseudo-label": "pseudo-label",
}

# file names inside artifacts
MANIFEST = "manifest.json"
STORE = "store.h5"
SPLITS = "splits.json"
FINGERPRINT = "fingerprint.json"
MODEL_JSON = "model.json"
METRICS = "metrics.jsonl"
CENTROIDS = "centroids.npy"
CODES = "codes.npy"
MEMBERS = "members.json"
STYLES_PICTURE = "styles.png"
SAMPLES = "samples"
PER_CASE = "per_case.csv"
SUMMARY = "summary.json"
TABLE = "table.md"
COMPARISON = "comparison.md"
REPORT_HTML = "report.html"
REPORT_MARKDOWN = "report.md"
FIGURES = "figures"
EXTRAS = "extras"  # what an adaptation method writes for inspection
ITKSNAP_LABELS = "labels.itksnap.txt"  # label descriptions beside predictions
SLICER_COLOURS = "labels.ctbl"  # the same as a 3D Slicer colour table

# the manifest `udaseg phantom` writes beside the raw files it makes (outside the workspace)
PHANTOM_MANIFEST = "dataset.yaml"

# suffixes of folders that are not (yet, or any more) complete artifacts
PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"


def checkpoint_name(which: str) -> str:
    """File name of a training checkpoint: ``latest``, ``best`` or ``final``."""
    return f"checkpoint_{which}.pt"


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_name(name: str, what: str = "--name") -> str:
    """Refuse a name that becomes a file or folder name in the workspace unless it is plain.

    Plain: letters, digits and ``. _ + -``, starting with a letter or digit, not ending in a
    reserved suffix (``.partial``, ``.old``). So no separator, ``..`` or absolute path can lead a
    write or a delete outside ``--work``, and no run can take the name of another's unfinished
    or replaced folder.

    Raises:
        UdasegError (exit code 2): naming ``what`` (the option or file the name came from).
    """
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise UdasegError(
            f'{what} "{name}" is not a plain folder name',
            hint="use letters, digits and . _ + - (starting with a letter or digit; no slashes)",
            exit_code=2,
        )
    for suffix in (PARTIAL_SUFFIX, OLD_SUFFIX):
        if name.endswith(suffix):
            raise UdasegError(
                f'{what} "{name}" ends in {suffix}, which marks unfinished or replaced folders',
                hint=f"choose a name that does not end in {PARTIAL_SUFFIX} or {OLD_SUFFIX}",
                exit_code=2,
            )
    return name


def stage_dir(work: Path, folder: str) -> Path:
    """``W/<folder>``: where one stage keeps its runs (``folder`` is one of the names above)."""
    return Path(work) / folder


def run_dir(work: Path, folder: str, name: str) -> Path:
    """``W/<folder>/<name>``: one run's artifact folder (``name`` checked by :func:`check_name`)."""
    return Path(work) / folder / check_name(name, "run name")


def workspace_of(artifact_dir: Path) -> Path | None:
    """The workspace root ``W`` an artifact folder lies in (resolved), or None when the folder is
    not where this layout puts artifacts (e.g. a model directory copied elsewhere)."""
    artifact_dir = Path(artifact_dir).resolve()
    for folder in RUN_FOLDERS:
        # a folder may be nested (``export/nnunet``): compare its last parts
        parts = tuple(folder.split("/"))
        if artifact_dir.parent.parts[-len(parts) :] == parts:
            return artifact_dir.parents[len(parts)]
    if artifact_dir.name == REPORT:
        return artifact_dir.parent
    return None


def joined(*parts: str) -> str:
    """A default run name from its identity parts: ``joined("mmwhs", "ct") == "mmwhs__ct"``."""
    return JOIN.join(parts)
