"""benchmarks/train_step.py in its --quick form: one run gives float32 and bf16 rows for a
segmenter and a translator, so the full measurement does not fail on something a tiny run catches.

The subprocesses import torch several times (timing child, one peak-memory child per precision):
about 20 s on an idle 2-core machine, longer while other jobs run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=180
    )


def test_quick_run_gives_both_precisions_for_a_segmenter_and_a_translator(tmp_path):
    out = tmp_path / "train_step.json"
    done = run_script("--quick", "--models", "unet2d.v1,cyclegan.v1", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["model"]: row for row in result["rows"]}
    assert rows["unet2d.v1"]["kind"] == "segmenter"
    assert rows["cyclegan.v1"]["kind"] == "translator"
    for row in rows.values():
        assert row["error"] is None
        for precision in ("float32", "bf16"):
            assert row[precision]["seconds_per_step"] > 0
            assert row[precision]["peak_rss_gb"] > 0
            assert len(row["step_seconds"][precision]) == 1  # --quick times one step
        expected = row["float32"]["seconds_per_step"] / row["bf16"]["seconds_per_step"]
        assert row["ratio"] == pytest.approx(expected)
        assert row["gflop_per_step"] > 0
    assert {"cpu", "bf16_flags", "torch", "threads", "date", "commit"} <= set(result["machine"])
    table = done.stdout[done.stdout.index("| model |") :]
    assert "| `unet2d.v1` | 2 x 32x32 |" in table and "| `cyclegan.v1` |" in table
    assert "machine:" in table


def test_unknown_model_is_refused_with_did_you_mean():
    done = run_script("--quick", "--models", "unet2d.v2")
    assert done.returncode == 2
    assert 'did you mean "unet2d.v1"' in done.stderr


def load_script(name: str):
    """A benchmark script as a module (benchmarks/ is no package), for its functions."""
    import importlib.util

    path = SCRIPT.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_translation_quality_prints_a_one_way_translator_without_its_cycle(capsys):
    """cut.v1 (one-way): the measures that apply are printed, the cycle and the reverse
    direction say they do not apply, instead of a KeyError or a translate_back crash."""
    from tests.translation.test_quality import cut_report
    from udaseg.translation.quality import NO_CYCLE

    script = load_script("translation_quality")
    report = {"translate": "W/translate/cut", "cases": ["c0"], **cut_report(False)}
    report["reverse"] = {"cases": [], "applies": False, "reason": NO_CYCLE}
    script.print_report(report, ["organ_a", "organ_b"])
    printed = capsys.readouterr().out
    assert "anatomy kept (cycle): does not apply" in printed
    assert "cycle difference n/a" in printed and "W1 to target intensities" in printed
    assert "reverse direction (target -> source): does not apply" in printed
    two_way = {"translate": "W/translate/cut2", "cases": ["c0"], **cut_report(True)}
    script.print_report(two_way, ["organ_a", "organ_b"])
    assert "cycle Dice" in capsys.readouterr().out


def test_ab_times_both_trees_in_one_run_and_refuses_a_tree_without_udaseg(tmp_path):
    script = SCRIPT.with_name("train_step_ab.py")
    repo = SCRIPT.parents[1]
    common = ["--model", "unet2d.v1", "--size", "32,32", "--rounds", "1", "--steps", "1"]
    done = subprocess.run(
        [sys.executable, str(script), str(repo), str(repo), *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["before", "after"]
    assert "unet2d.v1 bf16: median" in done.stdout and "before / after:" in lines[-1]
    empty = tmp_path / "not-a-checkout"
    (empty / "benchmarks").mkdir(parents=True)
    refused = subprocess.run(
        [sys.executable, str(script), str(empty), str(repo), *common],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and str(empty) in refused.stderr
