"""Option values given as text on the command line, turned into what the stages use.

Each function takes the text (``"0/4"``, ``"a,b"``) or the value already converted (a tuple, a
list), so configs built by code, tests or pipelines hold the same values as the command line's.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from udaseg.errors import UdasegError, look_up_option


def parse_shard(
    value: str | Sequence[int] | None, option: str = "--shard"
) -> tuple[int, int] | None:
    """``"i/n"`` or ``(i, n)`` -> ``(i, n)`` with ``0 <= i < n``; None stays None.

    Raises:
        UdasegError: naming ``option``, for text not of the form i/n or an i outside 0..n-1.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value
        try:
            index, count = (int(v) for v in value.split("/"))
        except ValueError as exc:
            raise UdasegError(
                f'{option} "{value}" must look like i/n, e.g. 0/4', exit_code=2
            ) from exc
    else:
        index, count = (int(v) for v in value)
        text = f"{index}/{count}"
    if count < 1 or not 0 <= index < count:
        raise UdasegError(
            f"{option} {text}: need 0 <= i < n",
            hint="SLURM: --shard ${SLURM_ARRAY_TASK_ID}/N with --array=0-(N-1)",
            exit_code=2,
        )
    return index, count


def comma_list(value: str | Sequence[Any] | None) -> list[str] | None:
    """``"a, b,c"`` or ``["a", "b", "c"]`` -> ``["a", "b", "c"]`` (blank items dropped); None
    and blank text are None (nothing chosen)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    items = value.split(",") if isinstance(value, str) else value
    return [str(item).strip() for item in items if str(item).strip()]


def parse_ints(value: Any, option: str) -> list[int]:
    """``"128,128"``, ``"16x128x128"``, ``[128, 128]`` or ``128`` as a list of ints.

    Raises:
        UdasegError: naming ``option`` when the text is not a list of integers.
    """
    if isinstance(value, int | float):
        return [int(value)]
    try:
        if isinstance(value, list | tuple):
            return [int(v) for v in value]
        return [int(v) for v in str(value).replace("x", ",").split(",")]
    except (TypeError, ValueError) as exc:
        raise UdasegError(f'{option} "{value}" must be numbers like 256,256', exit_code=2) from exc


def split_overrides(
    overrides: Mapping[str, Any],
    hparams: Mapping[str, Any],
    *,
    keys: Collection[str],
    accepted: Collection[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hparams, constructor arguments)`` from a training run's ``--set`` pairs.

    A key in ``keys`` overrides a copy of ``hparams`` (a None value keeps the default); any other
    key is a constructor argument. ``accepted``: the constructor's keywords, against which those
    are checked, or None to return them unchecked (checked once the constructor is known).
    ``patch_size`` comes out as a list of ints.

    Raises:
        UdasegError: a key in neither ``keys`` nor ``accepted``, with a "did you mean".
    """
    resolved, constructor = dict(hparams), {}
    for key, value in overrides.items():
        if key in keys:
            if value is not None:
                resolved[key] = value
        elif accepted is None or key in accepted:
            constructor[key] = value
        else:
            look_up_option(key, sorted({*keys, *accepted}), what="--set key")
    if "patch_size" in resolved:
        resolved["patch_size"] = parse_ints(resolved["patch_size"], "--set patch_size")
    check_hparams(resolved)
    return resolved, constructor


# what a hyperparameter's value may be, by its name (see _rule); checked in this order, so
# warmup_steps is a _WHOLE and not a _WHOLE_POSITIVE. A training stage refuses anything else
# before it makes a folder.
_WHOLE_POSITIVE = ("steps", "batch_size", "patch_size", "width", "blocks")
_WHOLE = ("warmup_steps", "pool_size")
_NON_NEGATIVE = (
    "lr",  # 0 holds a network still (a warm-start test, a frozen part)
    "weight_decay",
    "weight",
    "weights",
    "lambda",
    "momentum",
    "poly_power",
)
_FRACTION = ("betas", "decay_from", "ema_decay")  # in [0, 1)
# the optimisers and learning-rate schedules udaseg.training.optim builds
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "poly", "linear")
_NAMED = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES}


def _rule(key: str, names: tuple[str, ...]) -> bool:
    """``key`` is one of ``names``, or one with a prefix (``d_lr``, ``lambda_cycle``'s
    ``lambda``) or a suffix (``lr_g``)."""
    return any(
        key == name or key.endswith("_" + name) or key.startswith(name + "_") for name in names
    )


def check_hparams(hparams: Mapping[str, Any]) -> None:
    """Refuse hyperparameter values no training can use: a step count, batch or patch size or
    width that is not a positive whole number, a negative learning rate, weight or ``lambda_*``,
    a beta outside [0, 1), an unknown optimiser or schedule, or text where a number goes.

    Raises:
        UdasegError (exit code 2): naming ``--set key=value`` and what it must be.
    """
    for key, value in hparams.items():
        if value is None:
            continue
        items = value if isinstance(value, list | tuple) else [value]
        if _rule(key, _WHOLE):
            _check_numbers(key, value, items, "a whole number >= 0", whole=True, low=0)
        elif _rule(key, _WHOLE_POSITIVE):
            _check_numbers(key, value, items, "a whole number > 0", whole=True, low=1)
        elif _rule(key, _FRACTION):
            _check_numbers(key, value, items, "a number in [0, 1)", low=0, below=1)
        elif _rule(key, _NON_NEGATIVE):
            _check_numbers(key, value, items, "a number >= 0", low=0)
        elif key in _NAMED or key.endswith(tuple("_" + name for name in _NAMED)):
            choices = _NAMED[key.rsplit("_", 1)[-1]]
            look_up_option(str(value), choices, what=f"--set {key}")


def _check_numbers(key, value, items, wanted, *, whole=False, low=0, below=None) -> None:
    for item in items:
        number = isinstance(item, int | float) and not isinstance(item, bool)
        if (
            not number
            or not math.isfinite(item)
            or (whole and float(item) != int(item))
            or item < low
            or (below is not None and item >= below)
        ):
            shown = value if not isinstance(value, list | tuple) else ",".join(map(str, value))
            raise UdasegError(
                f"--set {key}={shown}: {key} must be {wanted}"
                + (" (each of its values)" if isinstance(value, list | tuple) else ""),
                hint="see the defaults with --show-defaults",
                exit_code=2,
            )


# what the voxel values of a written label map are: a dataset's own label codes or udaseg's class
# ids (udaseg.data.label_values says which class each value stands for)
DATASET_CODES = "dataset-codes"
CLASS_IDS = "class-ids"
LABEL_VALUES = (DATASET_CODES, CLASS_IDS)


def parse_label_values(value: str | None, option: str) -> str | None:
    """``"dataset-codes"`` or ``"class-ids"`` (any case); None stays None.

    Raises:
        UdasegError: naming ``option``, for anything else (with a "did you mean"); exit code 2.
    """
    if value is None:
        return None
    return look_up_option(str(value).strip().lower(), LABEL_VALUES, what=option)
