"""Small holes a user falls into: each is a named error with a non-zero exit code, and leaves
no ``.partial`` folder and no artifact behind."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from tests.conftest import TINY_MANIFEST
from udaseg.cli import app
from udaseg.data.store import Store
from udaseg.errors import UdasegError
from udaseg.stages import preprocess


def cli(*args) -> tuple[int, str]:
    """``udaseg ARGS`` as the console script ends it: (exit code, what it printed, unwrapped)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, UdasegError):  # what udaseg.cli.main prints and exits with
        return result.exception.exit_code, " ".join(str(result.exception).split())
    return result.exit_code, " ".join(result.output.split())


def leftovers(work: Path) -> list[str]:
    """Every folder a stage made under ``work`` apart from the preprocessed stores."""
    if not work.is_dir():
        return []
    return sorted(
        str(p.relative_to(work))
        for p in work.glob("*/*")
        if p.relative_to(work).parts[0] not in ("preprocessed",)
    )


@pytest.fixture
def stores(tiny_dataset, tmp_path) -> Path:
    raw, manifest = tiny_dataset
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=raw), tmp_path / "w")
    return tmp_path / "w" / "preprocessed" / "tiny__src"


# --- dataset manifests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "where", "wanted"),
    [
        ("inplane_size: [24, 24]", "inplane_size: [a, b]", "geometry.inplane_size", "integers"),
        ("inplane_mm: 2.0", "inplane_mm: two", "geometry.inplane_mm", "int or float"),
        ("inplane_mm: 2.0", "inplane_mm: true", "geometry.inplane_mm", "int or float"),
        ("[0.5, 99.5]", "[low, 99.5]", "domains.src.intensity.percentiles", "numbers"),
        ("seed: 0", "seed: zero", "splits.seed", "int"),
    ],
)
def test_a_manifest_type_error_names_the_file_the_key_and_the_type(
    tiny_dataset, tmp_path, old, new, where, wanted
):
    raw, manifest = tiny_dataset
    assert old in TINY_MANIFEST
    manifest.write_text(TINY_MANIFEST.replace(old, new))
    code, message = cli("preprocess", manifest, "--raw", raw, "--work", tmp_path / "w")
    assert code == 2, message
    assert str(manifest) in message and f"'{where}'" in message and wanted in message
    assert not (tmp_path / "w").exists()


# --- a damaged store -----------------------------------------------------------------------------


def damage(store: Path) -> None:
    """Flip bytes inside one compressed chunk of every case's image (the data region)."""
    with h5py.File(store, "r") as file:
        offsets = [file["cases"][c]["image"].id.get_chunk_info(2) for c in file["cases"]]
    data = bytearray(store.read_bytes())
    for chunk in offsets:
        middle = chunk.byte_offset + chunk.size // 2
        for i in range(middle - 8, middle + 8):
            data[i] ^= 0xFF
    store.write_bytes(bytes(data))


def test_a_damaged_chunk_names_the_store_and_case_and_training_leaves_nothing(stores):
    work = stores.parents[1]
    damage(stores / "store.h5")
    store = Store(stores / "store.h5")
    with pytest.raises(UdasegError, match="is damaged: case c0 cannot be read") as caught:
        store.image("c0")
    assert str(stores / "store.h5") in caught.value.message and "preprocess" in caught.value.hint
    # --force: past the integrity check, so the reading itself must fail cleanly
    train = ("segment-train", "--source", stores, "--work", work, "--device", "cpu")
    code, message = cli(*train, "--set", "steps=3", "--set", "base_channels=4", "--force")
    assert code != 0 and "is damaged" in message and "store.h5" in message
    assert leftovers(work) == []


# --- values no training can use ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--checkpoint-every", "0"], "--checkpoint-every 0 is out of range"),
        (["--set", "lr=-1"], "--set lr=-1: lr must be a number >= 0"),
        (["--set", "steps=0"], "--set steps=0: steps must be a whole number > 0"),
        (["--set", "batch_size=0"], "batch_size must be a whole number > 0"),
        (["--set", "lr=fast"], "--set lr=fast: lr must be a number"),
        (["--set", "aux_weight=-0.5"], "aux_weight must be a number >= 0"),
        (["--set", "patch_size=24,24,24"], "patch size [24, 24, 24] does not fit a 2D model"),
    ],
)
def test_an_unusable_training_value_is_refused_before_anything_is_written(stores, options, said):
    work = stores.parents[1]
    train = ("segment-train", "--source", stores, "--work", work, "--device", "cpu")
    code, message = cli(*train, "--set", "base_channels=4", *options)
    assert code == 2 and said in message, message
    assert leftovers(work) == []


def test_every_training_stage_checks_its_hparams():
    from udaseg.config.adapt import AdaptConfig
    from udaseg.config.translate_train import TranslateTrainConfig
    from udaseg.stages import adapt, translate_train

    with pytest.raises(UdasegError, match="lambda_cycle must be a number >= 0"):
        translate_train.split_overrides(
            TranslateTrainConfig(
                method="cyclegan.v1", source="s", target="t", hparams={"lambda_cycle": -1}
            )
        )
    with pytest.raises(UdasegError, match="steps must be a whole number > 0"):
        adapt.split_overrides(AdaptConfig(method="advent.v1", hparams={"steps": 0}))
    with pytest.raises(UdasegError, match='unknown --set optimizer "adma"'):
        adapt.split_overrides(AdaptConfig(method="advent.v1", hparams={"optimizer": "adma"}))


# --- the spelling of --raw -----------------------------------------------------------------------


def test_the_raw_folder_spelt_relative_then_absolute_is_the_same_data(
    tiny_dataset, tmp_path, monkeypatch
):
    raw, manifest = tiny_dataset
    monkeypatch.chdir(raw.parent)
    first = preprocess.run(
        preprocess.PreprocessConfig(dataset=str(manifest), raw=Path(raw.name)), tmp_path / "w"
    )
    assert not any(m.summary["skipped"] for m in first)
    for spelling in (raw.resolve(), Path(".") / ".." / raw.parent.name / raw.name):
        again = preprocess.run(
            preprocess.PreprocessConfig(dataset=str(manifest), raw=spelling), tmp_path / "w"
        )
        assert all(m.summary["skipped"] for m in again), spelling


# --- pipelines -----------------------------------------------------------------------------------


def test_a_dry_run_refuses_a_raw_folder_that_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere"
    code, message = cli(
        "run", "sifa-mmwhs", "--work", tmp_path / "w", "--var", f"raw={missing}", "--dry-run"
    )
    assert code == 2, message
    assert f"--raw {missing} (pipeline variable raw) does not exist" in message
    assert "--var raw=PATH" in message
    assert not (tmp_path / "w").exists()
    (tmp_path / "data").mkdir()
    there = f"raw={tmp_path / 'data'}"
    code, message = cli("run", "sifa-mmwhs", "--work", tmp_path / "w", "--var", there, "--dry-run")
    assert code == 0, message
