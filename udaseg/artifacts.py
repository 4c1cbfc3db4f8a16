"""The artifact contract between stages.

Every stage writes one output directory. It is built in ``<dir>.partial/`` and moved into place with
:func:`os.replace` only when complete; ``manifest.json`` is written last, so a directory without a
manifest, or with the ``.partial`` suffix, never looks complete. The manifest records what made the
artifact (stage, schema and library versions, git commit), the resolved config and its hash, every
input artifact with the hash of *its* manifest, and every output file with its size and hash.

A consumer calls :func:`require_input` on each input directory. That refuses an artifact whose files
changed since it was written, whose own inputs were rebuilt since (so it is stale), or whose schema
version this udaseg does not know, with a message naming the stage to rerun. ``force=True`` turns
those refusals into warnings.

Layout of ``manifest.json`` (all keys always present)::

    {"schema_version": 1, "stage": "preprocess", "created": "2026-11-21T07:00:00Z",
     "udaseg_version": "0.1.0", "git_commit": "abc123" | null, "libraries": {"numpy": "2.4.6", ...},
     "config": {...}, "config_hash": "sha256 hex",
     "inputs": {"source": {"path": "/abs/dir", "stage": "preprocess", "manifest_hash": "..."}},
     "outputs": {"store.h5": {"size": 123, "sha256": "...", "mtime_ns": 0}},
     "summary": {...}}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from udaseg import __version__, layout
from udaseg.config import canonical_json, config_hash, json_default
from udaseg.errors import UdasegError

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = (1,)
MANIFEST_NAME = layout.MANIFEST
PARTIAL_SUFFIX = layout.PARTIAL_SUFFIX

_LIBRARIES = ("numpy", "SimpleITK", "h5py", "torch", "scikit-learn", "scipy", "PyYAML")


class StaleInputError(UdasegError):
    """An input artifact is missing, incomplete, modified or out of date."""


@dataclass
class Manifest:
    """In-memory form of ``manifest.json`` (see the module docstring for the file layout)."""

    stage: str
    config: dict[str, Any]
    config_hash: str
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    udaseg_version: str = __version__
    git_commit: str | None = None
    libraries: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=json_default) + "\n"


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_hash(artifact_dir: Path) -> str:
    """Hash identifying one build of an artifact: SHA-256 of its manifest file's bytes."""
    return file_sha256(Path(artifact_dir) / MANIFEST_NAME)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results (read from metadata, no imports)."""
    versions = {}
    for name in _LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def git_commit() -> str | None:
    """Commit of the udaseg checkout this code runs from (``+dirty`` if modified), else None."""
    package_dir = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(package_dir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def load_manifest(artifact_dir: Path) -> Manifest:
    """Read and validate ``artifact_dir/manifest.json``.

    Raises:
        StaleInputError: the directory or its manifest is missing (an unfinished run), the manifest
            is unreadable, or it has a schema version this udaseg does not know.
    """
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST_NAME
    if not path.is_file():
        partial = artifact_dir.with_name(artifact_dir.name + PARTIAL_SUFFIX)
        state = "was never finished" if partial.exists() else "does not exist"
        raise StaleInputError(
            f"artifact {artifact_dir} {state} (no {MANIFEST_NAME})",
            hint="run the stage that produces it first (or rerun it if it was interrupted)",
            path=artifact_dir,
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StaleInputError(
            f"cannot read manifest {path}: {exc}",
            hint="rerun the stage that produced it",
            path=path,
        ) from exc
    version = data.get("schema_version")
    if version not in KNOWN_SCHEMA_VERSIONS:
        raise StaleInputError(
            f"{path} has schema version {version!r}; this udaseg {__version__} reads "
            f"{', '.join(map(str, KNOWN_SCHEMA_VERSIONS))}",
            hint="rerun the stage with this udaseg version, or install the udaseg that made it",
            path=path,
        )
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in data.items() if k in known})


def describe_outputs(artifact_dir: Path, names: Iterable[str] | None = None) -> dict[str, dict]:
    """Size, SHA-256 and mtime of every file under ``artifact_dir`` (except the manifest)."""
    artifact_dir = Path(artifact_dir)
    if names is None:
        names = sorted(
            str(p.relative_to(artifact_dir)) for p in artifact_dir.rglob("*") if p.is_file()
        )
    outputs = {}
    for name in names:
        if name == MANIFEST_NAME:
            continue
        stat = (artifact_dir / name).stat()
        outputs[name] = {
            "size": stat.st_size,
            "sha256": file_sha256(artifact_dir / name),
            "mtime_ns": stat.st_mtime_ns,
        }
    return outputs


def verify_outputs(artifact_dir: Path, manifest: Manifest, *, full: bool = False) -> list[str]:
    """Names of recorded output files that are missing or changed.

    Sizes are always compared; hashes are recomputed when ``full`` or when a file's mtime differs
    from the recorded one (copies to another node change mtimes without changing content).
    """
    problems = []
    for name, meta in manifest.outputs.items():
        path = Path(artifact_dir) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        stat = path.stat()
        if stat.st_size != meta["size"]:
            problems.append(f"{name} changed size ({meta['size']} -> {stat.st_size} bytes)")
        elif (full or stat.st_mtime_ns != meta.get("mtime_ns")) and file_sha256(path) != meta[
            "sha256"
        ]:
            problems.append(f"{name} changed content")
    return problems


def _stale_reason(artifact_dir: Path, manifest: Manifest) -> str | None:
    """Why this artifact no longer matches what it was built from, or None if it still does."""
    problems = verify_outputs(artifact_dir, manifest)
    if problems:
        return "; ".join(problems)
    for name, record in manifest.inputs.items():
        upstream = Path(record["path"])
        if not (upstream / MANIFEST_NAME).is_file():
            return f"its input '{name}' ({upstream}) no longer exists"
        if manifest_hash(upstream) != record["manifest_hash"]:
            return f"its input '{name}' ({upstream}) was rebuilt after it"
    return None


def require_input_from(
    artifact_dir: Path,
    stages: dict[str, str],
    *,
    option: str,
    what: str,
    hint: str,
    force: bool = False,
) -> Manifest:
    """:func:`require_input` for an option that accepts the output of any of several stages.

    ``stages`` maps each accepted stage to the command that reruns it (``{"segment-train":
    "udaseg segment-train"}``). A folder made by another stage, or no artifact at all, is refused
    with exit code 2 as "``option`` ``artifact_dir`` is not ``what``" and ``hint``.
    """
    artifact_dir = Path(artifact_dir)
    stage = load_manifest(artifact_dir).stage if artifact_dir.is_dir() else None
    if stage not in stages:
        raise UdasegError(
            f"{option} {artifact_dir} is not {what}"
            + (f" (it was made by '{stage}')" if stage else ""),
            hint=hint,
            path=artifact_dir,
            exit_code=2,
        )
    return require_input(artifact_dir, stage=stage, rerun=stages[stage], force=force)


def require_input(artifact_dir: Path, *, stage: str, rerun: str, force: bool = False) -> Manifest:
    """Load an input artifact and check it is complete and current.

    Args:
        artifact_dir: the input's directory.
        stage: the stage that must have produced it (e.g. "preprocess").
        rerun: the command to suggest when it is stale, e.g. "udaseg preprocess mmwhs".
        force: warn instead of refusing when the input changed or is stale.

    Raises:
        StaleInputError: missing/incomplete, wrong stage, unknown schema, or (without ``force``)
            modified or built from inputs that changed since.
    """
    manifest = load_manifest(artifact_dir)
    if manifest.stage != stage:
        raise StaleInputError(
            f"{artifact_dir} was made by stage '{manifest.stage}', expected '{stage}'",
            hint=f"pass the output directory of `{rerun}`",
            path=artifact_dir,
        )
    reason = _stale_reason(Path(artifact_dir), manifest)
    if reason:
        message = f"input {artifact_dir} is out of date: {reason}"
        if not force:
            raise StaleInputError(
                message,
                hint=f"rerun `{rerun}` (or pass --force to use it anyway)",
                path=artifact_dir,
            )
        warnings.warn(f"{message} (used anyway: --force)", stacklevel=2)
    return manifest


def input_record(artifact_dir: Path, manifest: Manifest) -> dict[str, str]:
    """The entry a consumer stores in its own manifest's ``inputs`` for one input artifact."""
    return {
        "path": str(Path(artifact_dir).resolve()),
        "stage": manifest.stage,
        "manifest_hash": manifest_hash(artifact_dir),
    }


def is_current(artifact_dir: Path, config: dict[str, Any], inputs: dict[str, dict]) -> bool:
    """True when ``artifact_dir`` is complete, intact, and was built from this config and inputs."""
    try:
        manifest = load_manifest(artifact_dir)
    except StaleInputError:
        return False
    if manifest.config_hash != config_hash(config):
        return False
    recorded = {k: v.get("manifest_hash") for k, v in manifest.inputs.items()}
    wanted = {k: v.get("manifest_hash") for k, v in inputs.items()}
    return recorded == wanted and _stale_reason(Path(artifact_dir), manifest) is None


def reuse_if_current(
    artifact_dir: Path,
    config: dict[str, Any],
    inputs: dict[str, dict],
    log: Callable[[str], None],
    *,
    force: bool = False,
    redo: str = "use --force to recompute",
) -> Manifest | None:
    """The finished artifact's manifest, its summary marked ``skipped``, when ``artifact_dir`` is
    current (:func:`is_current`) and ``force`` is off; None when the stage must (re)build it.
    ``log`` gets one line saying so and ``redo`` (how to rebuild anyway)."""
    if force or not is_current(artifact_dir, config, inputs):
        return None
    log(f"{artifact_dir} is up to date; skipped ({redo})")
    done = load_manifest(artifact_dir)
    done.summary = {**done.summary, "skipped": True}
    return done


def check_run_name(name: str) -> str:
    """Refuse a ``--name`` that is not a plain folder name (it becomes ``W/<stage>/<name>/``)."""
    return layout.check_name(name, "--name")


def check_finished(path: Path, option: str) -> Path:
    """Refuse ``path`` when it is, or lies inside, an unfinished (``.partial``) or replaced
    (``.old``) folder: such a folder may hold checkpoints and files, but nothing vouches for them.

    Raises:
        UdasegError (exit code 2): naming ``option`` and the finished folder to pass instead.
    """
    path = Path(path)
    for part in (path, *path.parents):
        for suffix in (PARTIAL_SUFFIX, layout.OLD_SUFFIX):
            if part.name.endswith(suffix):
                finished = part.with_name(part.name[: -len(suffix)])
                state = "unfinished" if suffix == PARTIAL_SUFFIX else "replaced"
                raise UdasegError(
                    f"{option} {path} is an {state} run ({part.name} ends in {suffix})",
                    hint=f"pass the finished {finished} (rerun its stage to finish it)",
                    path=path,
                    exit_code=2,
                )
    return path


def input_dir(artifact_dir: Path, record: dict[str, str]) -> Path:
    """The folder of one input recorded in ``artifact_dir``'s manifest (``inputs[name]``).

    Inputs inside the same workspace are recorded relative to the artifact that uses them, so a
    workspace can be copied or moved; others keep their absolute path.
    """
    path = Path(record["path"])
    return path if path.is_absolute() else Path(os.path.normpath(Path(artifact_dir) / path))


def partial_dir(artifact_dir: Path) -> Path:
    artifact_dir = Path(artifact_dir)
    return artifact_dir.with_name(artifact_dir.name + PARTIAL_SUFFIX)


@contextlib.contextmanager
def building(
    artifact_dir: Path, *, keep_partial: bool = False, discard_on_error: bool = False
) -> Iterator[Path]:
    """Build an artifact in ``<artifact_dir>.partial/``; the caller finishes with :func:`publish`.

    A stale ``.partial`` left by a killed run is removed first unless ``keep_partial`` (training
    stages keep it to resume from its checkpoints). If the body raises, the ``.partial`` directory
    stays where it is (visibly unfinished; the next run clears or resumes it), or, with
    ``discard_on_error`` (stages with nothing to resume), is removed before the error goes on.
    """
    work = partial_dir(artifact_dir)
    if work.exists() and not keep_partial:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not discard_on_error:
        yield work
        return
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def publish(
    work: Path,
    artifact_dir: Path,
    *,
    stage: str,
    config: dict[str, Any],
    inputs: dict[str, dict[str, str]] | None = None,
    summary: dict[str, Any] | None = None,
) -> Manifest:
    """Write the manifest (last) into ``work`` and move it into place as ``artifact_dir``.

    An existing ``artifact_dir`` (an older build) is replaced; the swap goes through a temporary
    name so a crash at any point leaves either the old complete artifact or none.
    """
    manifest = Manifest(
        stage=stage,
        config=json.loads(canonical_json(config)),
        config_hash=config_hash(config),
        inputs=inputs or {},
        outputs=describe_outputs(work),
        summary=summary or {},
        git_commit=git_commit(),
        libraries=library_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    tmp = work / (MANIFEST_NAME + ".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, work / MANIFEST_NAME)
    artifact_dir = Path(artifact_dir)
    old = artifact_dir.with_name(artifact_dir.name + layout.OLD_SUFFIX)
    if artifact_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(artifact_dir, old)
    os.replace(work, artifact_dir)
    if old.exists():
        shutil.rmtree(old)
    return manifest


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file through a temporary name, so a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
