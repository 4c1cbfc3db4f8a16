"""How a model's training data was preprocessed, and raw scans preprocessed the same way.

A model learns on one grid (spacing, crop, fixed in-plane size) and one intensity scale; a raw
scan resampled or normalised otherwise gets a model input it never saw (measured on real
abdominal MR: mean Dice 0.67 from the store, 0.09 from the raw files with the manifest's defaults).
So ``segment-train`` and ``adapt`` record, in the model directory's ``model.json`` (a model copied
alone still carries it), every preprocessed store its training data came from::

    "preprocessing": {"version": 1, "stores": [
        {"dataset": "abdominal-normalized", "domain": "mr",
         "via": "target",                   # input names from the model to the store
         "store": "/abs/W/preprocessed/abdominal-normalized__mr",   # for people; never read
         "manifest": {...},                 # the resolved manifest, --set overrides included
         "pipeline_version": 1}, ...]}

found by walking the training inputs' manifests back to ``preprocess`` artifacts: directly (a
store trained or validated on), through a translated store (``translate-apply``: its source store,
and the translator's source and target stores), a pseudo-labelled store (``pseudo-label``: the
target store and the labelling model's own lineage) or an ``--init`` model (its record). A model
trained on CT translated to look like MR is applied to MR: the MR entry (the translator's target
store) is the one prediction on MR uses. Inputs no longer on disk add nothing; a store that is no
artifact is recorded with ``manifest: null`` (its domain is known, its preprocessing not).

:func:`raw_preprocessing` picks, for the domain of a raw folder, the settings that decide the model
input (:func:`settings`: view, geometry, the domain's intensity normalisation and orientation
rule) and puts them into the user's manifest, whose file patterns and reader still find and read
the files.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udaseg import artifacts, layout
from udaseg.data.manifest import DatasetManifest, load_manifest
from udaseg.errors import UdasegError

RECORD_KEY = "preprocessing"
RECORD_VERSION = 1


# --- recording (segment-train, adapt) ---------------------------------------------------------


def record_preprocessing(inputs: Mapping[str, Path]) -> dict[str, Any]:
    """model.json's ``preprocessing`` record (see the module docstring) for a model trained on
    ``inputs`` (input name -> store artifact folder, store file, or model directory), walked
    breadth first so the stores trained on directly come first."""
    stores: list[dict[str, Any]] = []
    seen: set[Path] = set()
    queue = deque((name, Path(path)) for name, path in inputs.items())
    while queue:
        via, path = queue.popleft()
        if path.is_file():  # a store.h5: an artifact when its folder has a manifest
            if not (path.parent / layout.MANIFEST).is_file():
                stores.append(_unknown_store(path, via))
                continue
            path = path.parent
        key = path.resolve()
        if key in seen or not path.is_dir():
            continue
        seen.add(key)
        recorded = _model_record(path)
        if recorded is not None:  # a model directory's own record is its walked lineage
            stores += [{**entry, "via": f"{via}/{entry['via']}"} for entry in recorded]
            continue
        if not (path / layout.MANIFEST).is_file():
            if (path / layout.STORE).is_file():
                stores.append(_unknown_store(path / layout.STORE, via))
            continue
        manifest = artifacts.load_manifest(path)
        if manifest.stage == "preprocess":
            stores.append(_store_entry(path, manifest, via))
            continue
        for name, record in manifest.inputs.items():
            queue.append((f"{via}/{name}", artifacts.input_dir(path, record)))
    return {"version": RECORD_VERSION, "stores": _distinct(stores)}


def _store_entry(path: Path, manifest: artifacts.Manifest, via: str) -> dict[str, Any]:
    config = manifest.config
    return {
        "dataset": config.get("dataset"),
        "domain": config.get("domain"),
        "via": via,
        "store": str(path.resolve()),
        "manifest": config.get("manifest"),
        "pipeline_version": config.get("pipeline_version"),
    }


def _unknown_store(path: Path, via: str) -> dict[str, Any]:
    """A store that is no artifact: its attributes name the dataset and domain, nothing more."""
    from udaseg.data.store import Store

    store = Store(path)
    try:
        dataset, domain = store.dataset, store.domain
    finally:
        store.close()
    return {
        "dataset": dataset,
        "domain": domain,
        "via": via,
        "store": str(path.resolve()),
        "manifest": None,
        "pipeline_version": None,
    }


def _model_record(path: Path) -> list[dict[str, Any]] | None:
    """The stores a model directory's model.json records, or None (not a model, or no record)."""
    import json

    model_json = path / layout.MODEL_JSON
    if not model_json.is_file():
        return None
    record = json.loads(model_json.read_text(encoding="utf-8")).get(RECORD_KEY)
    return list(record["stores"]) if isinstance(record, dict) else None


def _distinct(stores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per store folder (the first way it was reached)."""
    kept: dict[str, dict[str, Any]] = {}
    for entry in stores:
        kept.setdefault(entry["store"], entry)
    return list(kept.values())


# --- using the record (predict) ---------------------------------------------------------------


@dataclass
class RawPreprocessing:
    """How a raw folder's scans are preprocessed for a model.

    ``manifest``: the user's manifest with the settings used (``domain``'s file patterns and reader
    unchanged); ``record``: what enters the run's config (``from``: ``model`` when the model's
    record gave the settings, ``model grid`` when it gave the view and geometry only, ``manifest``
    when it gave none and the user's manifest's are used unchecked; ``settings``:
    :func:`settings`; ``pipeline_version``); ``note``: one line for the log; ``warning``: set when
    the settings could not be (fully) checked.
    """

    manifest: DatasetManifest
    record: dict[str, Any]
    note: str | None = None
    warning: str | None = None


def settings(manifest: DatasetManifest, domain: str | None) -> dict[str, Any]:
    """What of a manifest decides a model's input from a domain's scans, keyed by manifest key:
    ``view`` and ``geometry.*`` (spacing in mm, crop, in-plane size: the dataset's grid), then,
    unless ``domain`` is None, the domain's ``intensity.*`` and ``assume_orientation``. Numbers
    are floats and pairs lists, so equal settings compare equal."""
    g = manifest.geometry
    values: dict[str, Any] = {
        "view": manifest.view,
        "geometry.inplane_mm": g.inplane_mm,
        "geometry.through_plane_mm": g.through_plane_mm,
        "geometry.crop.method": g.crop.method,
        "geometry.crop.margin_mm": g.crop.margin_mm,
        "geometry.crop.threshold": g.crop.threshold,
        "geometry.inplane_size": g.inplane_size,
    }
    if domain is not None:
        spec, where = manifest.domain(domain), f"domains.{domain}"
        values.update(
            {
                f"{where}.intensity.method": spec.intensity.method,
                f"{where}.intensity.percentiles": spec.intensity.percentiles,
                f"{where}.intensity.window": spec.intensity.window,
                f"{where}.intensity.over": spec.intensity.over,
                f"{where}.assume_orientation": spec.assume_orientation,
            }
        )
    return {key: _plain(value) for key, value in values.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return [_plain(v) for v in value]


def with_settings(
    manifest: DatasetManifest, domain: str, source: DatasetManifest, *, grid_only: bool = False
) -> DatasetManifest:
    """``manifest`` with ``source``'s view and geometry and (unless ``grid_only``) its
    ``domain``'s intensity normalisation and orientation rule; everything else, the domain's file
    patterns and reader included, kept."""
    domains = dict(manifest.domains)
    if not grid_only:
        recorded = source.domain(domain)
        domains[domain] = dataclasses.replace(
            manifest.domain(domain),
            intensity=recorded.intensity,
            assume_orientation=recorded.assume_orientation,
        )
    return dataclasses.replace(
        manifest, view=source.view, geometry=source.geometry, domains=domains
    )


def raw_preprocessing(
    info: dict[str, Any], model_dir: Path, manifest: DatasetManifest, domain: str
) -> RawPreprocessing:
    """The preprocessing of ``domain``'s raw scans for the model of ``info`` (its model.json).

    The record's store of ``domain`` in the user's dataset is used as recorded (a note says so);
    one of another dataset with the same domain name must agree with the user's manifest on every
    :func:`settings` key. Without such a store, a recorded store of the same dataset gives this
    domain's settings from its resolved manifest (the same ``--set`` overrides). When the record
    knows no preprocessing of the domain at all, its grid (view, geometry) is still the model's,
    and the domain's normalisation is the user's manifest's, with a warning; without a record the
    user's manifest is used, with a warning.

    Raises:
        UdasegError: the user's manifest is another dataset whose settings differ from the
            record (exit code 2; naming each key with both values); the record holds two
            different preprocessings of this domain.
    """
    entries = [e for e in (info.get(RECORD_KEY) or {}).get("stores", []) if e.get("manifest")]
    if not entries:
        why = (
            "its stores were no `udaseg preprocess` artifacts"
            if RECORD_KEY in info
            else f"trained by an older udaseg, or its {layout.MODEL_JSON} was exported without it"
        )
        warning = (
            f"model {model_dir} records no preprocessing of its training data ({why}), so the raw "
            f"scans are preprocessed with --dataset {manifest.name}'s own settings and nothing "
            "checks that they match; if the model's stores were made with --set overrides, "
            "predict from a store preprocessed with them instead"
        )
        return RawPreprocessing(manifest, _record("manifest", manifest, domain), warning=warning)
    entry = _entry_for(entries, manifest.name, domain, model_dir)
    if entry is None:
        return _grid_only(entries, model_dir, manifest, domain)
    recorded = recorded_manifest(entry, model_dir)
    where = f"{entry['dataset']}/{entry['domain']} store {entry['store']}"
    differs = _differences(settings(manifest, domain), settings(recorded, domain))
    if differs and entry["dataset"] != manifest.name:
        raise _mismatch(model_dir, manifest.name, domain, where, differs, entry["dataset"])
    used = with_settings(manifest, domain, recorded)
    note = f"preprocessing {domain} scans as model {model_dir}'s training data was ({where}"
    note += f"; its manifest's {domain} settings)" if entry["domain"] != domain else ")"
    if differs:
        note += ", not as --dataset says: " + "; ".join(
            f"{key} {theirs} (not {mine})" for key, (mine, theirs) in differs.items()
        )
    return RawPreprocessing(
        used, _record("model", used, domain), note=note, warning=_version_warning(entry, model_dir)
    )


def _grid_only(
    entries: list[dict[str, Any]], model_dir: Path, manifest: DatasetManifest, domain: str
) -> RawPreprocessing:
    """The model's grid (view, geometry) with the user's normalisation of a domain the record
    does not know (see :func:`raw_preprocessing`)."""
    entry = next((e for e in entries if e["dataset"] == manifest.name), entries[0])
    recorded = recorded_manifest(entry, model_dir)
    where = f"{entry['dataset']}/{entry['domain']} store {entry['store']}"
    differs = _differences(settings(manifest, None), settings(recorded, None))
    if differs and entry["dataset"] != manifest.name:
        raise _mismatch(model_dir, manifest.name, domain, where, differs, entry["dataset"])
    used = with_settings(manifest, domain, recorded, grid_only=True)
    known = ", ".join(sorted({f"{e['dataset']}/{e['domain']}" for e in entries}))
    warning = (
        f"model {model_dir} records no preprocessing of {manifest.name}/{domain} (only of "
        f"{known}): the raw scans are resampled and cropped to its grid ({where}), but their "
        f"intensity normalisation and orientation rule are --dataset {manifest.name}'s, unchecked"
    )
    return RawPreprocessing(used, _record("model grid", used, domain), warning=warning)


def _version_warning(entry: dict[str, Any], model_dir: Path) -> str | None:
    from udaseg.data.pipeline import PIPELINE_VERSION

    if entry.get("pipeline_version") in (None, PIPELINE_VERSION):
        return None
    return (
        f"model {model_dir} was trained on data preprocessed by pipeline version "
        f"{entry['pipeline_version']}; this udaseg preprocesses with version "
        f"{PIPELINE_VERSION}, so raw scans may not come out exactly as its training data"
    )


def _entry_for(
    entries: list[dict[str, Any]], dataset: str, domain: str, model_dir: Path
) -> dict[str, Any] | None:
    """The recorded store for (dataset, domain): that store; else one of the domain in another
    dataset; else one of the same dataset whose manifest holds the domain; else None."""
    candidates = (
        [e for e in entries if e["domain"] == domain and e["dataset"] == dataset],
        [e for e in entries if e["domain"] == domain],
        [
            e
            for e in entries
            if e["dataset"] == dataset and domain in e["manifest"].get("domains", {})
        ],
    )
    for found in candidates:
        if not found:
            continue
        variants = {
            artifacts.config_hash(settings(recorded_manifest(e, model_dir), domain)): e
            for e in found
        }
        if len(variants) > 1:
            stores = ", ".join(e["store"] for e in variants.values())
            raise UdasegError(
                f"model {model_dir} was trained on {domain} data preprocessed in "
                f"{len(variants)} different ways ({stores}), so raw {domain} scans cannot be "
                "preprocessed like its training data",
                hint="preprocess the scans into a store with the settings you want and pass that "
                "store as --data",
                path=model_dir,
            )
        return found[0]
    return None


def recorded_manifest(
    entry: dict[str, Any], model_dir: Path, where: str | None = None
) -> DatasetManifest:
    """The resolved dataset manifest a record entry holds, validated again. ``where``: the file
    holding the record, for the error (default: the model directory's model.json).

    Raises:
        UdasegError: it no longer validates (written by another udaseg version).
    """
    import yaml

    # through a file: load_manifest is the one public way to validate a manifest
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recorded.yaml"
        path.write_text(yaml.safe_dump(entry["manifest"]), encoding="utf-8")
        try:
            return load_manifest(path)
        except UdasegError as exc:
            where = where or f"model {model_dir}'s {layout.MODEL_JSON}"
            raise UdasegError(
                f"the manifest of {entry['dataset']}/{entry['domain']} recorded in {where} "
                f"does not validate any more: {exc.message}",
                hint="predict from a preprocessed store, or retrain the model with this udaseg",
                path=model_dir,
            ) from exc


def _differences(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {key: (mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]}


def _mismatch(
    model_dir: Path,
    dataset: str,
    domain: str,
    where: str,
    differs: dict[str, tuple[Any, Any]],
    recorded: str,
) -> UdasegError:
    fields = "; ".join(
        f"{key}: --dataset {mine!r}, model {theirs!r}" for key, (mine, theirs) in differs.items()
    )
    return UdasegError(
        f"model {model_dir} was trained on data preprocessed otherwise than --dataset {dataset} "
        f"would preprocess {domain} scans ({where}): {fields}",
        hint=f"predict with --dataset {recorded} (its recorded settings are used), or give your "
        "manifest the model's values, or preprocess the scans into a store with them",
        path=model_dir,
        exit_code=2,
    )


def _record(origin: str, manifest: DatasetManifest, domain: str) -> dict[str, Any]:
    from udaseg.data.pipeline import PIPELINE_VERSION

    return {
        "from": origin,
        "dataset": manifest.name,
        "domain": domain,
        "settings": settings(manifest, domain),
        "pipeline_version": PIPELINE_VERSION,
    }


def agree(chosen: RawPreprocessing, other: RawPreprocessing, model_dir: Path) -> None:
    """An ensemble member's preprocessing must be the first model's when both come from records.

    Raises:
        UdasegError (exit code 2): naming the member and the keys that differ.
    """
    if other.record["from"] == "manifest" or chosen.record["from"] == "manifest":
        return
    differs = _differences(chosen.record["settings"], other.record["settings"])
    if differs:
        fields = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in differs.items())
        raise UdasegError(
            f"--ensemble {model_dir} was trained on data preprocessed otherwise than the first "
            f"model's: {fields}",
            hint="ensemble models trained on stores preprocessed with the same settings",
            path=model_dir,
            exit_code=2,
        )
