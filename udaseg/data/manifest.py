"""Dataset manifests: how a public (or user's) dataset is laid out and how to preprocess it.

A manifest is a YAML file (``data_manifests/<name>.yaml`` for the built-in datasets, or any path for
a user's own data). It is validated on load: an unknown key anywhere is an error that names the key,
its place in the file, and the closest known key. A user's manifest may ``extends:`` a built-in one
and override only what differs (mappings are merged key by key, everything else replaced).

Conventions used throughout:
- class ids are 1..C in the order of ``classes``; 0 is background;
- ``label_map`` maps raw label codes of one domain to a class name or ``background``; a code
  found in a label volume that is in neither is an error (so a wrong manifest cannot silently
  drop organs);
- file patterns are relative to the raw folder and contain ``{case}``, which matches the case id.
"""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from udaseg import layout
from udaseg.errors import UdasegError, did_you_mean

# short-axis: cardiac short-axis stacks, kept as acquired (udaseg/data/geometry.py)
VIEWS = ("axial", "coronal", "sagittal", "short-axis")
READERS = ("nifti", "dicom-png", "sifa-tfrecords")
CROP_METHODS = ("none", "body", "label")
INTENSITY_METHODS = ("none", "minmax", "zscore", "window")

# Allowed keys per section: key -> expected python type(s). Nested sections are validated by
# dedicated functions so their errors can name the full path (e.g. "domains.ct.intensity.method").
_TOP = {
    "name": str,
    "description": str,
    "obtain": str,
    "citation": str,
    "extends": str,
    "view": str,
    "classes": list,
    "regions": dict,
    "domains": dict,
    "geometry": dict,
    "splits": dict,
}
_DOMAIN = {
    "modality": str,
    "description": str,
    "reader": str,
    "images": str,
    "labels": (str, type(None)),
    "label_map": dict,
    "label_ranges": dict,
    "intensity": dict,
    "test_ids": list,
    "val_ids": list,
    "assume_orientation": str,
    "assume_spacing_scale": (list, type(None)),
    "other_codes": str,
}
_INTENSITY = {"method": str, "percentiles": list, "window": list, "over": str}
_GEOMETRY = {
    "inplane_mm": (int, float, type(None)),
    "through_plane_mm": (int, float, type(None)),
    "crop": dict,
    "inplane_size": (list, type(None)),
}
_CROP = {"method": str, "margin_mm": (int, float), "threshold": (int, float, type(None))}
_SPLITS = {
    "source": str,
    "val_fraction": (int, float),
    "test_fraction": (int, float),
    "seed": int,
    "paired_cases": bool,
}


@dataclass(frozen=True)
class Intensity:
    """Per-volume intensity normalisation.

    method: ``none``; ``minmax`` (clip to the given percentiles, then scale to [-1, 1]);
    ``zscore`` (clip to percentiles, then zero mean / unit variance); ``window`` (clip to the fixed
    ``window`` [lo, hi] in raw units, e.g. CT Hounsfield units, then scale to [-1, 1]).
    over: statistics computed over the ``body`` (voxels above the body threshold) or ``all`` voxels.
    """

    method: str = "minmax"
    percentiles: tuple[float, float] = (0.5, 99.5)
    window: tuple[float, float] | None = None
    over: str = "body"


@dataclass(frozen=True)
class Domain:
    """One modality of a dataset (e.g. ``ct``), as laid out on disk."""

    name: str
    modality: str
    reader: str
    images: str
    labels: str | None
    label_map: dict[int, str]
    label_ranges: dict[str, tuple[int, int]]
    intensity: Intensity
    test_ids: tuple[str, ...]
    val_ids: tuple[str, ...] = ()
    # orientation code (e.g. "LAS") to use instead of the files' header, for releases known to
    # carry a wrong direction matrix; None trusts the header
    assume_orientation: str | None = None
    # factors (x, y, z file axes) by which the header's spacing is multiplied, for releases whose
    # arrays were resampled without updating the header; None trusts the header
    assume_spacing_scale: tuple[float, float, float] | None = None
    # what a label code missing from label_map means: "error" (default: a wrong manifest cannot
    # silently drop an organ) or "background" (for label sets with many uninteresting codes)
    other_codes: str = "error"
    description: str = ""

    @property
    def labelled(self) -> bool:
        return self.labels is not None


@dataclass(frozen=True)
class Crop:
    """Crop rule: ``body`` (bounding box of voxels above ``threshold``, or an automatic threshold;
    uses no labels, so it is safe for the unlabelled target), ``label`` (bounding box of the
    labelled organs; uses labels, so only for data whose labels may be used), or ``none``."""

    method: str = "body"
    margin_mm: float = 10.0
    threshold: float | None = None


@dataclass(frozen=True)
class Geometry:
    """Target grid: in-plane and through-plane spacing in mm (None keeps the original), crop,
    and a fixed in-plane size (rows, cols) reached by centred padding/cropping (None keeps)."""

    inplane_mm: float | None = None
    through_plane_mm: float | None = None
    crop: Crop = field(default_factory=Crop)
    inplane_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Splits:
    """How cases are split: the manifest's published test ids per domain, then a seeded
    validation fraction of the rest (or a seeded test fraction where no ids were published)."""

    source: str = ""
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    # True when both domains are sequences of the same patients (BraTS): split by patient so no
    # patient's T1 is in training while its T2 is in test.
    paired_cases: bool = False


@dataclass(frozen=True)
class DatasetManifest:
    """A validated dataset manifest (see ``docs/reference/dataset-manifest.md`` for every key)."""

    name: str
    view: str
    classes: tuple[str, ...]
    domains: dict[str, Domain]
    geometry: Geometry
    splits: Splits
    regions: dict[str, tuple[str, ...]]
    description: str = ""
    obtain: str = ""
    citation: str = ""
    path: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def class_ids(self) -> dict[str, int]:
        """Class name -> id (1..C)."""
        return {name: i + 1 for i, name in enumerate(self.classes)}

    def evaluation_classes(self) -> dict[str, list[int]]:
        """Name -> label ids evaluated together: the regions if any (BraTS WT/TC/ET), else each
        class on its own."""
        ids = self.class_ids()
        if self.regions:
            return {r: [ids[c] for c in members] for r, members in self.regions.items()}
        return {name: [i] for name, i in ids.items()}

    def domain(self, name: str) -> Domain:
        if name not in self.domains:
            raise UdasegError(
                f'dataset "{self.name}" has no domain "{name}"{did_you_mean(name, self.domains)}',
                hint=f"choose one of: {', '.join(self.domains)}",
                exit_code=2,
            )
        return self.domains[name]


def builtin_names() -> list[str]:
    """Names of the manifests shipped with udaseg."""
    folder = importlib.resources.files("udaseg.data_manifests")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _builtin_path(name: str) -> Path | None:
    candidate = importlib.resources.files("udaseg.data_manifests") / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UdasegError(f"cannot read dataset manifest {path}: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise UdasegError(f"dataset manifest {path} must be a YAML mapping", path=path)
    return data


# mappings that describe one thing as a whole: an extension replaces them rather than adding codes
_REPLACED_WHOLE = {"label_map", "label_ranges", "regions"}


def _merge(base: dict, override: dict) -> dict:
    """Merge ``override`` into a copy of ``base``: sections key by key, other values (and the
    code mappings in ``_REPLACED_WHOLE``) replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if (
            isinstance(value, dict)
            and isinstance(merged.get(key), dict)
            and key not in _REPLACED_WHOLE
        ):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _resolve(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> tuple[dict, Path]:
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        found = _builtin_path(text)
        if found is None:
            names = builtin_names()
            raise UdasegError(
                f'unknown dataset "{text}"{did_you_mean(text, names)}',
                hint=f"use one of {', '.join(names)}, or the path of your own manifest YAML "
                "(see examples/custom_dataset.yaml)",
                exit_code=2,
            )
        path = found
    if not path.is_file():
        raise UdasegError(f"dataset manifest {path} does not exist", path=path, exit_code=2)
    data = _read_yaml(path)
    if "extends" in data:
        parent = str(data["extends"])
        if parent in seen:
            raise UdasegError(f"manifest {path} extends itself through {parent}", path=path)
        base, _ = _resolve(parent, (*seen, parent))
        data = _merge(base, {k: v for k, v in data.items() if k != "extends"})
    return data, path


def apply_overrides(data: dict, overrides: Mapping[str, Any] | list[str]) -> dict:
    """Apply overrides to raw manifest data: ``{"geometry.inplane_mm": 2.0}``, or ``key.sub=value``
    strings whose values are read as YAML."""
    if not isinstance(overrides, Mapping):
        parsed = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UdasegError(
                    f'override "{item}" is not of the form key=value',
                    hint="e.g. --set geometry.inplane_mm=2.0",
                    exit_code=2,
                )
            parsed[key] = yaml.safe_load(value)
        overrides = parsed
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UdasegError(f'override "{key}": "{part}" is not a section', exit_code=2)
        node[parts[-1]] = value
    return data


def load_manifest(
    name_or_path: str | Path, overrides: Mapping[str, Any] | list[str] | None = None
) -> DatasetManifest:
    """Load, merge (``extends``), override and validate a dataset manifest.

    Args:
        name_or_path: a built-in dataset name (``mmwhs``) or the path of a YAML file.
        overrides: ``{"key.sub": value}`` (``--set``, already parsed) or ``key.sub=value``
            strings, applied after loading.

    Raises:
        UdasegError: unknown dataset, unreadable YAML, unknown keys, wrong types or values.
    """
    data, path = _resolve(name_or_path)
    data = apply_overrides(data, overrides or {})
    return _validate(data, str(path))


def _check_keys(section: dict, allowed: dict, where: str, source: str) -> None:
    if not isinstance(section, dict):
        raise UdasegError(f"{source}: '{where}' must be a mapping", exit_code=2)
    for key, value in section.items():
        if key not in allowed:
            raise UdasegError(
                f"{source}: unknown key '{where + '.' if where else ''}{key}'"
                f"{did_you_mean(str(key), list(allowed))}",
                hint=f"known keys here: {', '.join(allowed)}",
                exit_code=2,
            )
        wanted = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
        # YAML's true/false are ints to isinstance: a number key refuses them
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in wanted)
            raise UdasegError(
                f"{source}: '{where + '.' if where else ''}{key}' must be {names}, got {value!r}",
                exit_code=2,
            )


def _choice(value: str, choices: tuple[str, ...], where: str, source: str) -> str:
    if value not in choices:
        raise UdasegError(
            f"{source}: {where} '{value}' is not one of {', '.join(choices)}"
            f"{did_you_mean(value, choices)}",
            exit_code=2,
        )
    return value


def _pair(value: Any, where: str, source: str, *, whole: bool = False) -> tuple:
    """``value`` as a pair of numbers (whole numbers if ``whole``).

    Raises:
        UdasegError (exit code 2): naming the file, the key path ``where`` and the expected type.
    """
    kind = int if whole else (int, float)
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    ):
        wanted = "integers" if whole else "numbers"
        raise UdasegError(
            f"{source}: '{where}' must be a list of 2 {wanted}, got {value!r}", exit_code=2
        )
    return tuple(value)


def _require(section: dict, keys: tuple[str, ...], where: str, source: str) -> None:
    for key in keys:
        if key not in section:
            raise UdasegError(f"{source}: '{where}' needs the key '{key}'", exit_code=2)


def _validate(data: dict, source: str) -> DatasetManifest:
    _check_keys(data, _TOP, "", source)
    _require(data, ("name", "view", "classes", "domains"), "top level", source)
    view = _choice(data["view"], VIEWS, "view", source)
    classes = tuple(str(c) for c in data["classes"])
    if len(set(classes)) != len(classes) or "background" in classes:
        raise UdasegError(f"{source}: classes must be distinct and not 'background'", exit_code=2)
    regions = {}
    for region, members in (data.get("regions") or {}).items():
        for member in members:
            _choice(str(member), classes, f"regions.{region} member", source)
        regions[str(region)] = tuple(str(m) for m in members)
    # the dataset and domain names make the store's folder name (W/preprocessed/<name>__<domain>)
    name = layout.check_name(str(data["name"]), f"{source}: 'name'")
    domains = {
        layout.check_name(str(d), f"{source}: domain"): _validate_domain(
            str(d), spec, classes, source
        )
        for d, spec in data["domains"].items()
    }
    return DatasetManifest(
        name=name,
        view=view,
        classes=classes,
        domains=domains,
        geometry=_validate_geometry(data.get("geometry") or {}, source),
        splits=_validate_splits(data.get("splits") or {}, source),
        regions=regions,
        description=str(data.get("description", "")),
        obtain=str(data.get("obtain", "")),
        citation=str(data.get("citation", "")),
        path=source,
        raw=data,
    )


def _validate_domain(name: str, spec: dict, classes: tuple[str, ...], source: str) -> Domain:
    where = f"domains.{name}"
    _check_keys(spec, _DOMAIN, where, source)
    _require(spec, ("modality", "reader", "images"), where, source)
    reader = _choice(spec["reader"], READERS, f"{where}.reader", source)
    allowed_targets = (*classes, "background")
    label_map = {}
    for code, target in (spec.get("label_map") or {}).items():
        try:
            code = int(code)
        except (TypeError, ValueError) as exc:
            raise UdasegError(
                f"{source}: {where}.label_map code {code!r} is not an integer", exit_code=2
            ) from exc
        label_map[code] = _choice(
            str(target), allowed_targets, f"{where}.label_map[{code}]", source
        )
    label_ranges = {}
    for target, bounds in (spec.get("label_ranges") or {}).items():
        _choice(str(target), classes, f"{where}.label_ranges", source)
        bounds = _pair(bounds, f"{where}.label_ranges.{target}", source, whole=True)
        label_ranges[str(target)] = bounds
    if spec.get("labels") is not None:
        needed = "label_ranges" if reader == "dicom-png" else "label_map"
        if not (label_ranges if reader == "dicom-png" else label_map):
            raise UdasegError(
                f"{source}: {where} has labels but no {needed}",
                hint=f"say which label codes are which class in {where}.{needed}",
                exit_code=2,
            )
    for key in ("images", "labels"):
        if spec.get(key) is not None and "{case}" not in spec[key]:
            raise UdasegError(f"{source}: {where}.{key} must contain '{{case}}'", exit_code=2)
    return Domain(
        name=name,
        modality=str(spec["modality"]),
        reader=reader,
        images=spec["images"],
        labels=spec.get("labels"),
        label_map=label_map,
        label_ranges=label_ranges,
        intensity=_validate_intensity(spec.get("intensity") or {}, f"{where}.intensity", source),
        test_ids=tuple(str(c) for c in spec.get("test_ids") or ()),
        val_ids=_val_ids(spec, where, source),
        assume_orientation=_orientation(spec.get("assume_orientation"), where, source),
        assume_spacing_scale=_spacing_scale(spec.get("assume_spacing_scale"), where, source),
        other_codes=_choice(
            spec.get("other_codes", "error"),
            ("error", "background"),
            f"{where}.other_codes",
            source,
        ),
        description=str(spec.get("description", "")),
    )


def _val_ids(spec: dict, where: str, source: str) -> tuple[str, ...]:
    """The domain's fixed validation ids, refused where one is also a published test id."""
    val = tuple(str(c) for c in spec.get("val_ids") or ())
    both = sorted(set(val) & {str(c) for c in spec.get("test_ids") or ()})
    if both:
        raise UdasegError(
            f"{source}: {where}: cases {', '.join(both)} are in both val_ids and test_ids",
            hint="a case validates or tests, never both; remove it from one of the lists",
            exit_code=2,
        )
    if len(set(val)) != len(val):
        raise UdasegError(f"{source}: {where}.val_ids lists a case twice", exit_code=2)
    return val


def _spacing_scale(value: Any, where: str, source: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if not (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise UdasegError(
            f"{source}: {where}.assume_spacing_scale must be 3 positive numbers (file axes x, y, "
            f"z), got {value!r}",
            hint="e.g. [0.6, 0.6, 1.0] for in-plane spacings that are 0.6 times the header's",
            exit_code=2,
        )
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _orientation(code: str | None, where: str, source: str) -> str | None:
    if code is None:
        return None
    axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}.get(c) for c in str(code).upper()]
    if len(axes) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
        raise UdasegError(
            f"{source}: {where}.assume_orientation '{code}' is not an orientation code",
            hint="three letters, one of L/R, one of P/A, one of S/I, e.g. LPS or LAS",
            exit_code=2,
        )
    return str(code).upper()


def _validate_intensity(spec: dict, where: str, source: str) -> Intensity:
    _check_keys(spec, _INTENSITY, where, source)
    method = _choice(spec.get("method", "minmax"), INTENSITY_METHODS, f"{where}.method", source)
    window = spec.get("window")
    if method == "window" and not (isinstance(window, list) and len(window) == 2):
        raise UdasegError(
            f"{source}: {where}.window must be [low, high] for method 'window'", exit_code=2
        )
    if window is not None:
        _pair(window, f"{where}.window", source)
    percentiles = _pair(spec.get("percentiles", [0.5, 99.5]), f"{where}.percentiles", source)
    percentiles = tuple(float(p) for p in percentiles)
    if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise UdasegError(
            f"{source}: {where}.percentiles must be [low, high] within 0..100", exit_code=2
        )
    return Intensity(
        method=method,
        percentiles=percentiles,  # type: ignore[arg-type]
        window=tuple(float(w) for w in window) if window else None,  # type: ignore[arg-type]
        over=_choice(spec.get("over", "body"), ("body", "all"), f"{where}.over", source),
    )


def _validate_geometry(spec: dict, source: str) -> Geometry:
    _check_keys(spec, _GEOMETRY, "geometry", source)
    crop_spec = spec.get("crop") or {}
    _check_keys(crop_spec, _CROP, "geometry.crop", source)
    crop = Crop(
        method=_choice(
            crop_spec.get("method", "body"), CROP_METHODS, "geometry.crop.method", source
        ),
        margin_mm=float(crop_spec.get("margin_mm", 10.0)),
        threshold=crop_spec.get("threshold"),
    )
    size = spec.get("inplane_size")
    if size is not None and min(_pair(size, "geometry.inplane_size", source, whole=True)) <= 0:
        raise UdasegError(f"{source}: geometry.inplane_size must be [rows, cols]", exit_code=2)
    for key in ("inplane_mm", "through_plane_mm"):
        if spec.get(key) is not None and spec[key] <= 0:
            raise UdasegError(f"{source}: geometry.{key} must be positive", exit_code=2)
    return Geometry(
        inplane_mm=spec.get("inplane_mm"),
        through_plane_mm=spec.get("through_plane_mm"),
        crop=crop,
        inplane_size=tuple(int(s) for s in size) if size else None,  # type: ignore[arg-type]
    )


def _validate_splits(spec: dict, source: str) -> Splits:
    _check_keys(spec, _SPLITS, "splits", source)
    splits = Splits(**spec)
    if not (0 <= splits.val_fraction < 1 and 0 <= splits.test_fraction < 1):
        raise UdasegError(f"{source}: splits fractions must be in [0, 1)", exit_code=2)
    return splits
