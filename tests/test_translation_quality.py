"""benchmarks/translation_quality.py: reading a translate run that is still training."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from udaseg.errors import UdasegError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "translation_quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("translation_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unfinished_workspace(tmp_path: Path) -> Path:
    """W/translate/run.partial/model.json and the two stores it names, as translate train and
    preprocess lay them out."""
    run = tmp_path / "translate" / "run.partial"
    run.mkdir(parents=True)
    info = {
        "name": "cyclegan.v1",
        "has_style_codes": False,
        "source": {"dataset": "abdo", "domain": "ct"},
        "target": {"dataset": "abdo", "domain": "mr"},
    }
    (run / "model.json").write_text(json.dumps(info))
    for domain in ("ct", "mr"):
        store = tmp_path / "preprocessed" / f"abdo__{domain}"
        store.mkdir(parents=True)
        (store / "store.h5").write_bytes(b"")
    return tmp_path


def options(translate: Path, source_store=None, target_store=None) -> argparse.Namespace:
    return argparse.Namespace(
        translate=translate, source_store=source_store, target_store=target_store
    )


def test_an_unfinished_run_is_read_from_its_partial_folder_with_the_workspace_stores(
    quality, tmp_path
):
    work = unfinished_workspace(tmp_path)
    for given in (work / "translate" / "run", work / "translate" / "run.partial"):
        run = quality.unfinished_run(options(given))
        assert run.directory == work / "translate" / "run.partial"
        assert run.source.resolve() == (work / "preprocessed" / "abdo__ct").resolve()
        assert run.target.resolve() == (work / "preprocessed" / "abdo__mr").resolve()
        assert run.has_style_codes is False


def test_an_unfinished_run_takes_named_stores_and_refuses_missing_ones(quality, tmp_path):
    work = unfinished_workspace(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "store.h5").write_bytes(b"")
    run = quality.unfinished_run(options(work / "translate" / "run", target_store=elsewhere))
    assert run.target == elsewhere
    with pytest.raises(UdasegError, match="target store of run.partial") as refused:
        quality.unfinished_run(options(work / "translate" / "run", target_store=tmp_path / "no"))
    assert "--target-store" in refused.value.hint
    with pytest.raises(UdasegError, match="no model.json"):
        quality.unfinished_run(options(tmp_path / "translate" / "other"))
