"""The artifact contract between stages.

Every stage writes one output directory. It is built in ``<dir>.partial/`` and moved into place with
:func:`os.replace` only when complete; ``manifest.json`` is written last, so a directory without a
manifest, or with the ``.partial`` suffix, never looks complete. The manifest records what made the
artifact (stage, schema and library versions, git commit), the resolved config and its hash, every
input artifact with the hash of *its* manifest, and every output file with its size and hash.

A consumer calls :func:`require_input` on each input directory. That refuses an artifact whose files
changed since it was written, whose own inputs were rebuilt since (so it is stale), or whose schema
version this udaseg does not know, with a message naming the stage to rerun. ``force=True`` turns
those refusals into warnings, and the consumer records that it was built from a stale input, so
it and everything built from it are out of date until the input is rebuilt (staleness is checked
through every level of inputs, not only the first).

Paths inside the workspace are written as ``<work>/segment/x`` and expanded on reading against the
workspace the artifact is in now, so a workspace copied or moved elsewhere stays current; paths
outside it (raw data) are written resolved. While an artifact is built, its stage holds an
exclusive lock on ``<dir>.lock`` (see :func:`locked`).

Layout of ``manifest.json`` (all keys always present)::

    {"schema_version": 1, "stage": "preprocess", "created": "2026-11-21T07:00:00Z",
     "udaseg_version": "0.1.0", "git_commit": "abc123" | null, "libraries": {"numpy": "2.4.6", ...},
     "config": {...}, "config_hash": "sha256 hex",
     "inputs": {"source": {"path": "<work>/preprocessed/x", "stage": "preprocess",
                           "manifest_hash": "...", "stale": "why (only when forced)"}},
     "outputs": {"store.h5": {"size": 123, "sha256": "...", "mtime_ns": 0, "ctime_ns": 0,
                              "inode": 0}},
     "summary": {...}}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
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


# how paths inside the workspace are written in manifests and summaries
WORK_TOKEN = "<work>"
LOCK_SUFFIX = ".lock"
# set to a folder to keep lock files there instead of beside the artifacts (see :func:`locked`)
LOCK_DIR_ENV = "UDASEG_LOCK_DIR"


class StaleInputError(UdasegError):
    """An input artifact is missing, incomplete, modified or out of date."""


class ArtifactLockedError(UdasegError):
    """Another process is building the same artifact."""


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


# files this process already hashed: (path, size, mtime, ctime, inode) -> sha256
_hashed: dict[tuple, str] = {}


def content_hash(path: Path) -> str:
    """SHA-256 of a file, read once per process while its size, times and inode stay the same."""
    stat = Path(path).stat()
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if key not in _hashed:
        _hashed[key] = file_sha256(Path(path))
    return _hashed[key]


def files_fingerprint(paths: Iterable[Path], root: Path | None = None) -> list[list]:
    """``[name, size, sha256]`` of every file at or under ``paths``: how a stage identifies inputs
    that are not artifacts (raw scans, label folders, exported models).

    Names are relative to ``root`` when given (so ``--raw data``, ``./data`` and ``/abs/data``,
    or a copied folder, give the same rows), else absolute. The content is hashed rather than the
    mtime trusted: ``cp -r`` sets new times on the same data, and changed data can keep an old
    mtime (about 1 s per GB, each file read once per process).
    """
    base = os.path.abspath(root) if root is not None else None
    rows = []
    for path in paths:
        path = Path(path)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if not file.is_file():
                continue
            name = os.path.abspath(file)
            if base is not None:
                name = Path(os.path.relpath(name, base)).as_posix()
            rows.append([name, file.stat().st_size, content_hash(file)])
    return rows


def manifest_hash(artifact_dir: Path) -> str:
    """Hash identifying one build of an artifact: SHA-256 of its manifest file's bytes."""
    return file_sha256(Path(artifact_dir) / MANIFEST_NAME)


def portable(value: Any, artifact_dir: Path) -> Any:
    """``value`` (JSON-ready) with every absolute path inside ``artifact_dir``'s workspace written
    as ``<work>/...``; the inverse of :func:`expanded`. Other values are returned unchanged."""

    def convert(text: str, root: Path) -> str:
        if not os.path.isabs(text):
            return text
        path = Path(text)
        if path != root and root not in path.parents:
            return text
        rest = path.relative_to(root).as_posix()
        return WORK_TOKEN if rest == "." else f"{WORK_TOKEN}/{rest}"

    return _map_strings(value, artifact_dir, convert)


def expanded(value: Any, artifact_dir: Path) -> Any:
    """``value`` with every ``<work>/...`` path made absolute against the workspace
    ``artifact_dir`` lies in now (see :func:`portable`)."""

    def convert(text: str, root: Path) -> str:
        if text == WORK_TOKEN:
            return str(root)
        if text.startswith(WORK_TOKEN + "/"):
            return str(root / text[len(WORK_TOKEN) + 1 :])
        return text

    return _map_strings(value, artifact_dir, convert)


def _map_strings(value: Any, artifact_dir: Path, convert: Callable[[str, Path], str]) -> Any:
    """``value`` with ``convert(text, workspace root)`` applied to every string in it (none when
    ``artifact_dir`` lies in no workspace)."""
    root = layout.workspace_of(artifact_dir)
    if root is None:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return convert(item, root) if isinstance(item, str) else item

    return walk(value)


def run_hash(config: dict[str, Any], artifact_dir: Path) -> str:
    """The config hash an artifact at ``artifact_dir`` records for ``config``: paths inside the
    workspace count relative to it, so the same run in a moved workspace has the same hash."""
    return config_hash(portable(json.loads(canonical_json(config)), artifact_dir))


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results (read from metadata, no imports)."""
    versions = {}
    for name in _LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


@functools.cache
def git_commit() -> str | None:
    """Commit of the udaseg checkout this code runs from (``+dirty`` if modified), else None
    (no git, or an installed copy outside a checkout).

    Asked once per process: the code that runs is what was imported at start, so a later edit of
    the tree must not relabel it, and a pipeline publishing dozens of artifacts runs git twice,
    not twice per artifact.
    """
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
    artifact_dir = check_finished(Path(artifact_dir), "input")
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
    manifest = Manifest(**{k: v for k, v in data.items() if k in known})
    manifest.config = expanded(manifest.config, artifact_dir)
    manifest.inputs = expanded(manifest.inputs, artifact_dir)
    manifest.summary = expanded(manifest.summary, artifact_dir)
    return manifest


def describe_outputs(artifact_dir: Path, names: Iterable[str] | None = None) -> dict[str, dict]:
    """Size, SHA-256, mtime, ctime and inode of every file under ``artifact_dir`` (except the
    manifest)."""
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
            **_identity(stat),
        }
    return outputs


def _identity(stat: os.stat_result) -> dict[str, int]:
    """What tells that a file may have changed without reading it. ``cp -p`` or ``touch -r`` can
    restore an mtime, but any write, copy or restore gives a new ctime or inode."""
    return {"mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


# files whose hash this process already checked: (path, size, mtime, ctime, inode) -> sha256
_checked: dict[tuple, str] = {}


def verify_outputs(artifact_dir: Path, manifest: Manifest, *, full: bool = False) -> list[str]:
    """Names of recorded output files that are missing or changed.

    Sizes are always compared; hashes are recomputed when ``full`` or when a file's mtime, ctime
    or inode differs from the recorded one (a copied workspace is hashed once per process).
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
            continue
        identity = _identity(stat)
        if not full and all(meta.get(k) == v for k, v in identity.items()):
            continue
        key = (str(path.resolve()), stat.st_size, *identity.values())
        digest = _checked.get(key) if not full else None
        if digest is None:
            digest = _checked[key] = file_sha256(path)
        if digest != meta["sha256"]:
            problems.append(f"{name} changed content")
    return problems


def stale_reason(artifact_dir: Path, manifest: Manifest | None = None) -> str | None:
    """Why this artifact no longer matches what it was built from, or None if it still does.

    Checked through every level of inputs: an artifact is out of date when its files changed, an
    input is gone or was rebuilt since, it was built with ``--force`` from an input that was out
    of date, or any input is itself out of date for one of these reasons.
    """
    return _stale_reason(Path(artifact_dir), manifest or load_manifest(artifact_dir), set())


def _stale_reason(artifact_dir: Path, manifest: Manifest, seen: set[Path]) -> str | None:
    problems = verify_outputs(artifact_dir, manifest)
    if problems:
        return "; ".join(problems)
    for name, record in manifest.inputs.items():
        if record["path"].startswith(WORK_TOKEN):
            # a folder moved out of its workspace (a model handed on alone): its inputs are not
            # there to check; its own files were
            continue
        upstream = input_dir(artifact_dir, record)
        if not (upstream / MANIFEST_NAME).is_file():
            return f"its input '{name}' ({upstream}) no longer exists"
        if manifest_hash(upstream) != record["manifest_hash"]:
            return f"its input '{name}' ({upstream}) was rebuilt after it"
        if record.get("stale"):
            return (
                f"it was built with --force from its input '{name}' ({upstream}), which was "
                f"out of date: {record['stale']}"
            )
        key = upstream.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            upstream_manifest = load_manifest(upstream)
        except StaleInputError as exc:
            return f"its input '{name}' ({upstream}): {exc.message}"
        reason = _stale_reason(upstream, upstream_manifest, seen)
        if reason:
            return f"its input '{name}' ({upstream}) is out of date: {reason}"
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
    reason = stale_reason(artifact_dir, manifest)
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
    """The entry a consumer stores in its own manifest's ``inputs`` for one input artifact;
    ``stale`` says why, when the input is out of date and used anyway (``--force``)."""
    record = {
        "path": str(Path(artifact_dir).resolve()),
        "stage": manifest.stage,
        "manifest_hash": manifest_hash(artifact_dir),
    }
    reason = stale_reason(artifact_dir, manifest)
    if reason:
        record["stale"] = reason
    return record


def is_current(artifact_dir: Path, config: dict[str, Any], inputs: dict[str, dict]) -> bool:
    """True when ``artifact_dir`` is complete, intact, and was built from this config and inputs,
    none of them out of date (:func:`stale_reason`)."""
    try:
        manifest = load_manifest(artifact_dir)
    except StaleInputError:
        return False
    if manifest.config_hash != run_hash(config, artifact_dir):
        return False
    recorded = {k: v.get("manifest_hash") for k, v in manifest.inputs.items()}
    wanted = {k: v.get("manifest_hash") for k, v in inputs.items()}
    return recorded == wanted and stale_reason(artifact_dir, manifest) is None


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


def lock_path(artifact_dir: Path) -> Path:
    """The lock file of an artifact: ``<dir>.lock`` beside it, or, when ``UDASEG_LOCK_DIR`` is
    set, a file in that folder named after the artifact's resolved path."""
    artifact_dir = Path(artifact_dir)
    folder = os.environ.get(LOCK_DIR_ENV)
    if not folder:
        return artifact_dir.with_name(artifact_dir.name + LOCK_SUFFIX)
    key = hashlib.sha256(str(artifact_dir.resolve()).encode()).hexdigest()[:16]
    return Path(folder) / f"{artifact_dir.name}-{key}{LOCK_SUFFIX}"


@contextlib.contextmanager
def locked(artifact_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``artifact_dir`` for the body, or fail at once.

    The lock is a ``flock`` on :func:`lock_path`, which also records who holds it (host, pid,
    start time, command). The kernel drops the lock when its process dies however it dies, so a
    lock left by a killed run is simply taken over; the file is removed on release. On a local
    filesystem and on NFS (Linux emulates ``flock`` with NFS byte-range locks) this excludes every
    other process; on Lustre only when it is mounted with ``-o flock`` (``localflock`` excludes
    processes of the same node only). Where locks are not honoured, set ``UDASEG_LOCK_DIR`` to a
    folder on a filesystem that honours them.

    Raises:
        ArtifactLockedError: another process holds the lock (exit code 3), naming it.
        UdasegError: the filesystem refuses locks.
    """
    path = lock_path(artifact_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ArtifactLockedError(
                f"{artifact_dir} is being built by another process ({_holder(path)})",
                hint="wait for it to finish, or stop it; this run changed nothing",
                path=artifact_dir,
                exit_code=3,
            ) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            raise UdasegError(
                f"cannot lock {path}: the filesystem does not support locks ({exc.strerror})",
                hint=f"set {LOCK_DIR_ENV} to a folder on a filesystem that does (every process "
                "that may build the same artifact must use the same folder)",
                path=path,
            ) from exc
        # the previous holder may have removed the file between our open and our lock
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _holder(path: Path) -> str:
    """Who holds a lock, as its file says."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"pid {holder['pid']} on {holder['host']} since {holder['started']}: "
            f"{holder['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"see {path}"


@contextlib.contextmanager
def building(
    artifact_dir: Path, *, keep_partial: bool = False, discard_on_error: bool = False
) -> Iterator[Path]:
    """Build an artifact in ``<artifact_dir>.partial/``; the caller finishes with :func:`publish`
    inside the body.

    The artifact's lock (:func:`locked`) is held from before anything is touched until the body
    ends, so a second process building the same artifact fails at once and changes nothing.
    Under ``torchrun`` every rank enters with the same folder; rank 0 holds the lock.

    A stale ``.partial`` left by a killed run is removed first unless ``keep_partial`` (training
    stages keep it to resume from its checkpoints). If the body raises, the ``.partial`` directory
    stays where it is (visibly unfinished; the next run clears or resumes it), or, with
    ``discard_on_error`` (stages with nothing to resume), is removed before the error goes on.
    """
    lock = locked(artifact_dir) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with lock:
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

    The file holds paths inside the workspace as ``<work>/...`` (:func:`portable`); the returned
    manifest holds them absolute, as :func:`load_manifest` would. An existing ``artifact_dir``
    (an older build) is replaced; the swap goes through a temporary name so a crash at any point
    leaves either the old complete artifact or none.
    """
    artifact_dir = Path(artifact_dir)
    plain_config = json.loads(canonical_json(config))
    recorded = Manifest(
        stage=stage,
        config=portable(plain_config, artifact_dir),
        config_hash=run_hash(plain_config, artifact_dir),
        inputs=portable(inputs or {}, artifact_dir),
        outputs=describe_outputs(work),
        summary=portable(json.loads(json.dumps(summary or {}, default=json_default)), artifact_dir),
        git_commit=git_commit(),
        libraries=library_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    tmp = work / (MANIFEST_NAME + ".tmp")
    tmp.write_text(recorded.to_json())
    os.replace(tmp, work / MANIFEST_NAME)
    old = artifact_dir.with_name(artifact_dir.name + layout.OLD_SUFFIX)
    if artifact_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(artifact_dir, old)
    os.replace(work, artifact_dir)
    if old.exists():
        shutil.rmtree(old)
    recorded.config = expanded(recorded.config, artifact_dir)
    recorded.inputs = expanded(recorded.inputs, artifact_dir)
    recorded.summary = expanded(recorded.summary, artifact_dir)
    return recorded


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file through a temporary name, so a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
