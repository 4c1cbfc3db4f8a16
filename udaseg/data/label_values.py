"""What the voxel values of a label map stand for: udaseg's class ids, or a dataset's own codes.

udaseg computes with *class ids*: 0 background, 1..C the manifest's ``classes`` in order (stores,
models, metrics). A dataset's label files hold its own *label codes*, per domain: the domain's
``label_map`` maps each code to a class or to background (abdominal-normalized CT: spleen 1,
right kidney 2, left kidney 3, liver 6; its MR: liver 1, ..., spleen 4). ``udaseg predict``
writes the codes by default, so a prediction opened beside the ground truth shows each organ
under the same value (and colour); ``udaseg evaluate`` maps them back.

A :class:`LabelValues` says which class (or background) each value of one kind stands for. The
codes of a domain (:func:`dataset_codes`) are the inverse of its ``label_map``:

* each class is written as the smallest code that maps to it (MM-WHS maps 420 and 421 to the
  left atrium: 420 is written, both are read);
* background is written as 0; codes the manifest maps to background (BTCV's gallbladder, 4) are
  read as background but never written;
* a domain without a ``label_map`` (an unlabelled target) takes the codes every labelled domain of
  the dataset shares, when they agree (a user's own data: one code per organ in every domain).

Codes are unavailable (:func:`dataset_codes` raises, naming why) when a class has no code in the
domain, a class's code is 0, the labels are grey-level ranges (``label_ranges``: CHAOS PNG masks)
rather than codes, or the labelled domains' codes differ. Values are written as uint8 when every
value fits, else uint16 (MM-WHS's 820), so a code may be at most 65535.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from udaseg.config.values import CLASS_IDS, DATASET_CODES, LABEL_VALUES
from udaseg.data.manifest import DatasetManifest, Domain
from udaseg.errors import UdasegError

BACKGROUND = "background"
MAX_VALUE = 65535  # uint16, what a written label map holds at most


@dataclass(frozen=True)
class LabelValues:
    """One kind of label values.

    ``kind``: :data:`CLASS_IDS` or :data:`DATASET_CODES`; ``classes``: the class names whose ids
    the values are read as (id = position + 1); ``names``: value -> :data:`BACKGROUND` or a class
    name (0 is background; several values may name one class); ``source``: what the values are,
    for messages (``the label codes of abdominal-normalized/ct``).
    """

    kind: str
    classes: tuple[str, ...]
    names: dict[int, str]
    source: str

    def table(self) -> dict[str, int]:
        """Background and each class (in class order) with the value written for it: 0 for
        background, the smallest value naming the class for a class."""
        smallest: dict[str, int] = {}
        for value in sorted(self.names):
            smallest.setdefault(self.names[value], value)
        return {BACKGROUND: 0, **{name: smallest[name] for name in self.classes}}

    def describe(self) -> str:
        """The written values as text: ``0 background, 6 liver, 2 right_kidney``."""
        return ", ".join(f"{value} {name}" for name, value in self.table().items())

    @property
    def dtype(self) -> type:
        """The smallest unsigned type holding every written value (uint8 or uint16)."""
        return np.uint8 if max(self.table().values()) <= 255 else np.uint16

    @property
    def is_class_ids(self) -> bool:
        """True when the written values are the class ids themselves (nothing to convert)."""
        return list(self.table().values()) == list(range(len(self.classes) + 1))

    def encode(self, ids: np.ndarray) -> np.ndarray:
        """Class ids 0..C (any layout, e.g. (S, H, W)) -> the values written, as :attr:`dtype`."""
        lut = np.array(list(self.table().values()), dtype=self.dtype)
        return lut[np.asarray(ids)]

    def to_class_ids(
        self,
        array: np.ndarray,
        where: str,
        *,
        path: str | None = None,
        hint: str | None = None,
    ) -> np.ndarray:
        """An integer label map of these values (any layout) -> class ids, uint8 (int16 past 255
        classes).

        Raises:
            UdasegError: values that are none of these, listed after ``where`` (which case and
                file), with ``path`` and ``hint``.
        """
        n_classes = len(self.classes)
        out = np.uint8 if n_classes < 256 else np.int16
        ints = np.asarray(array)
        if ints.dtype.kind == "f":  # whole numbers, checked by the caller
            ints = ints.astype(np.int64)
        if ints.size == 0:
            return ints.astype(out)
        low, high = int(ints.min()), int(ints.max())
        if self.is_class_ids and low >= 0 and high <= n_classes:
            return ints.astype(out, copy=False)  # the common case, without a lookup
        unknown = [v for v in _present(ints, low, high) if v not in self.names]
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise UdasegError(
                f"{where} has values {shown} outside {self.source} ({self.describe()})",
                hint=hint,
                path=path,
            )
        ids = {BACKGROUND: 0, **{name: i + 1 for i, name in enumerate(self.classes)}}
        lut = np.zeros(high + 1, dtype=out)
        for value, name in self.names.items():
            if value <= high:
                lut[value] = ids[name]
        return lut[ints]

    def record(self) -> dict[str, object]:
        """What a predict run records about the values it wrote (see :func:`from_record`)."""
        return {"label_values": self.kind, "label_source": self.source, "label_table": self.table()}


def _present(ints: np.ndarray, low: int, high: int) -> list[int]:
    """The distinct values of an integer array, ascending."""
    if low >= 0 and high <= 1 << 20:  # label values are small: counting beats sorting 10^7 voxels
        return [int(v) for v in np.flatnonzero(np.bincount(ints.ravel()))]
    return [int(v) for v in np.unique(ints)]


def class_ids(classes: Sequence[str], dataset: str) -> LabelValues:
    """udaseg's class ids of ``classes`` (0 background, 1..C in order)."""
    classes = tuple(classes)
    names = {0: BACKGROUND, **{i + 1: name for i, name in enumerate(classes)}}
    return LabelValues(
        CLASS_IDS, classes, names, f"the class ids 0..{len(classes)} of dataset '{dataset}'"
    )


def dataset_codes(manifest: DatasetManifest, domain: str | None) -> LabelValues:
    """The label codes of ``domain`` (see the module docstring); with ``domain`` None, the codes
    every labelled domain of the dataset shares.

    Raises:
        UdasegError: the codes are unavailable, saying why (see the module docstring); an unknown
            domain (exit code 2).
    """
    if domain is not None:
        spec = manifest.domain(domain)
        if spec.label_map:
            return _domain_codes(manifest, spec)
        if spec.label_ranges:
            raise UdasegError(
                f"the {domain} labels of dataset '{manifest.name}' are grey-level ranges "
                "(label_ranges), not label codes"
            )
    labelled = [d for d in manifest.domains.values() if d.label_map]
    if not labelled:
        raise UdasegError(f"no domain of dataset '{manifest.name}' maps label codes (label_map)")
    found = [_domain_codes(manifest, d) for d in labelled]
    if len({tuple(f.table().items()) for f in found}) > 1:
        described = "; ".join(
            f"{d.name}: {f.describe()}" for d, f in zip(labelled, found, strict=True)
        )
        raise UdasegError(
            f"{'domain ' + domain + ' of ' if domain else ''}dataset '{manifest.name}' has no "
            f"label_map of its own, and its labelled domains' codes differ ({described})",
            hint="name the domain whose codes are meant",
        )
    names = {value: name for name, value in found[0].table().items()}
    domains = ", ".join(d.name for d in labelled)
    return LabelValues(
        DATASET_CODES,
        manifest.classes,
        names,
        f"the label codes of {manifest.name} (shared by its domains {domains})",
    )


def _domain_codes(manifest: DatasetManifest, spec: Domain) -> LabelValues:
    """The codes of a domain with a ``label_map``; codes a uint16 cannot hold are left out."""
    names = {0: BACKGROUND}
    for code, name in spec.label_map.items():
        if code == 0 and name != BACKGROUND:
            raise UdasegError(
                f"domain {spec.name} of dataset '{manifest.name}' maps code 0 to {name}, but 0 "
                "is background in a label map udaseg writes"
            )
        if 0 < code <= MAX_VALUE:
            names[code] = name
    missing = [c for c in manifest.classes if c not in names.values()]
    if missing:
        raise UdasegError(
            f"domain {spec.name} of dataset '{manifest.name}' has no label code (1..{MAX_VALUE}) "
            f"for {', '.join(missing)}"
        )
    source = f"the label codes of {manifest.name}/{spec.name}"
    return LabelValues(DATASET_CODES, manifest.classes, names, source)


def from_record(
    record: Mapping[str, object], classes: Sequence[str], where: str
) -> LabelValues | None:
    """The values a predict run recorded (:meth:`LabelValues.record`), read as the class ids of
    ``classes`` (matched by name, so a class order of another manifest still reads right); None
    for a run that recorded none (older runs wrote class ids).

    Raises:
        UdasegError: the recorded classes are not ``classes``, or the record is malformed;
            naming ``where``.
    """
    kind, table = record.get("label_values"), record.get("label_table")
    if kind is None:
        return None
    if kind not in LABEL_VALUES or not isinstance(table, Mapping) or table.get(BACKGROUND) != 0:
        raise UdasegError(f"{where} records label values {kind!r} without a valid label_table")
    recorded = [name for name in table if name != BACKGROUND]
    if sorted(recorded) != sorted(classes):
        raise UdasegError(
            f"{where} holds label maps of the classes {recorded}, not {list(classes)}",
            hint="evaluate with the --dataset the predictions were made for",
        )
    names = {int(value): str(name) for name, value in table.items()}  # type: ignore[union-attr]
    return LabelValues(str(kind), tuple(classes), names, str(record.get("label_source") or kind))
