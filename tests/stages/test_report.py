"""`udaseg report`: a self-contained HTML page and a Markdown file of a whole workspace.

The workspace is the phantom-demo pipeline's smoke preset: every stage for 2 iterations on the
tiny phantom (~15 s on 2 CPU cores), built once for the module.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from udaseg.artifacts import load_manifest
from udaseg.cli import app, main
from udaseg.config.report import ReportConfig
from udaseg.pipeline import runner as pipelines
from udaseg.reporting.curves import curve_panels, curves_png
from udaseg.reporting.discovery import read_metrics
from udaseg.stages import report

PNG = b"\x89PNG\r\n\x1a\n"
IMG_SRC = re.compile(r'<img\s[^>]*src="([^"]*)"')
MD_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
EVALUATED = {
    "no-adaptation",
    "translation-only",
    "translation-only-styles",
    "translation+advent",
    "supervised",
}
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("report") / "W"
    loaded = pipelines.load_pipeline(
        "phantom-demo", work, preset="smoke", overrides={"device": "cpu"}
    )
    pipelines.run(loaded, loaded.stages, echo=lambda line: None)
    return work


@pytest.fixture(scope="module")
def built(work) -> dict:
    """The CLI's --json summary of the workspace's report."""
    done = CliRunner().invoke(app, ["report", "--work", str(work), "--json"])
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def _is_png(data: bytes) -> bool:
    # signature, then the IHDR chunk with a non-zero width and height
    return (
        data[:8] == PNG
        and data[12:16] == b"IHDR"
        and int.from_bytes(data[16:20], "big") > 0
        and int.from_bytes(data[20:24], "big") > 0
    )


def test_html_embeds_every_picture_as_a_png_data_uri(work, built):
    page = (work / "report" / "report.html").read_text(encoding="utf-8")
    sources = IMG_SRC.findall(page)
    assert sources and len(sources) == built["images"]
    for src in sources:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert _is_png(base64.b64decode(src[len(prefix) :], validate=True))
    # self-contained: nothing is fetched from elsewhere
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<link" not in page and "<script src" not in page
    assert f'data-images="{len(sources)}"' in page


def test_markdown_links_pictures_written_beside_it(work, built):
    text = (work / "report" / "report.md").read_text(encoding="utf-8")
    links = MD_IMAGE.findall(text)
    assert len(links) == built["images"]
    for link in links:
        assert link.startswith("figures/")
        assert _is_png((work / "report" / link).read_bytes())


def _evaluated_cases(work: Path) -> dict[str, list[str]]:
    """Evaluate run name -> the cases its summary.json lists."""
    return {
        path.parent.name: json.loads(path.read_text(encoding="utf-8"))["cases"]
        for path in (work / "evaluate").glob("*/summary.json")
    }


def test_every_section_with_artifacts_has_its_pictures(work, built):
    trained = [p for folder in ("translate", "segment", "adapt") for p in (work / folder).iterdir()]
    cases = sum(len(c) for c in _evaluated_cases(work).values())
    images = {key: s["images"] for key, s in built["sections"].items()}
    assert images == {
        "workspace": 0,
        "data": 1,  # one picture, a panel per store
        "translator": 3,  # two translators' sample grids and the style plot
        "curves": len(trained),
        "comparison": 0,
        "provenance": 0,
        "per-case": 0,
        "dice": 1,
        # every run is scored against the same raw MR labels: one overview of all runs on the
        # first case, then a picture per run and case
        "predictions": 1 + cases,
    }
    assert not built["sections"]["translator"]["notes"]
    assert not built["sections"]["predictions"]["notes"]


def test_comparison_table_has_every_evaluated_run_with_its_numbers(work, built):
    text = (work / "report" / "report.md").read_text(encoding="utf-8")
    table = _section(text, "Comparison")
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")]
    head, body = rows[0], rows[2:]  # rows[1]: the alignment rule
    assert {row[0].lstrip("| ") for row in body} == EVALUATED
    column = head.index("mean Dice")
    for row in body:
        name = row[0].lstrip("| ")
        path = work / "evaluate" / name / "summary.json"
        summary = json.loads(path.read_text(encoding="utf-8"))
        mean = summary["mean_over_classes"]["dice"]["mean"]
        assert row[column] == f"{mean:.3f}"
    page = (work / "report" / "report.html").read_text(encoding="utf-8")
    for name in EVALUATED:
        assert f"<tr><td>{name}</td>" in page


def test_report_is_an_artifact_listing_what_it_shows(work, built):
    manifest = load_manifest(work / "report")
    assert manifest.stage == "report"
    assert {"evaluate/supervised", "translate/cyclegan", "preprocessed/phantom-abdomen__mr"} <= set(
        manifest.inputs
    )
    assert {"report.html", "report.md", "figures/data.png"} <= set(manifest.outputs)
    assert not (work / "report.partial").exists()
    assert built["evaluate_runs"] == len(EVALUATED)


def test_empty_workspace_says_what_is_missing(tmp_path):
    summary = report.run(ReportConfig(), tmp_path).summary
    assert summary["images"] == 0
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    for missing in ("no preprocess run", "no translate run", "no training run", "no evaluate run"):
        assert missing in text
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "<img" not in page and "no evaluate run" in page


def test_missing_workspace_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["udaseg", "report", "--work", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())  # rich wraps lines


def test_an_unreadable_prediction_is_noted_and_the_rest_still_reported(work, tmp_path):
    """An evaluate run whose prediction folder is gone: its row stays, its picture is explained."""
    other = tmp_path / "W2"
    shutil.copytree(work / "evaluate" / "supervised", other / "evaluate" / "gone")
    summary_path = other / "evaluate" / "gone" / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["pred"]["path"] = str(tmp_path / "deleted-predictions")
    # moved alone into another workspace, its paths in the old one are written out absolute
    summary["ref"]["path"] = str(work / "raw")
    summary_path.write_text(json.dumps(summary), encoding="utf-8")
    (tmp_path / "W2" / "translate" / "half.partial").mkdir(parents=True)
    built = report.run(ReportConfig(), other).summary
    notes = " ".join(built["sections"]["predictions"]["notes"])
    assert "evaluate/gone" in notes and "deleted-predictions" in notes
    assert built["sections"]["dice"]["images"] == 1
    assert "translate/half.partial" in " ".join(built["sections"]["workspace"]["notes"])
    text = (other / "report" / "report.md").read_text(encoding="utf-8")
    assert "| gone |" in text


def test_store_and_label_folder_references_are_drawn(work, tmp_path):
    """References other than the raw dataset: a store (its image shown) and a folder of label
    maps (no scan: labels on black, said in the caption)."""
    from udaseg.stages.evaluate import EvaluateConfig
    from udaseg.stages.evaluate import run as evaluate

    other, labels = tmp_path / "W3", tmp_path / "labels"
    labels.mkdir()
    shutil.copy(work / "raw" / "chaos_MR_T2_normalized" / "label_1.nii.gz", labels / "1.nii.gz")
    store, dataset = work / "preprocessed" / "phantom-abdomen__mr", work / "raw" / "dataset.yaml"
    evaluate(EvaluateConfig(pred=store, ref=store, dataset=str(dataset), name="self"), other)
    config = EvaluateConfig(
        pred=work / "predict" / "supervised",
        ref=labels,
        dataset=str(dataset),
        cases=["1"],
        name="vs-labels",
    )
    evaluate(config, other)
    predictions = report.run(ReportConfig(), other).summary["sections"]["predictions"]
    store_cases = len(_evaluated_cases(other)["self"])
    # an overview per reference, then one picture per (run, case)
    assert predictions["images"] == 2 + store_cases + 1 and predictions["notes"] == []
    text = (other / "report" / "report.md").read_text(encoding="utf-8")
    assert text.count("no scan image") == 2  # the overview and the case of vs-labels


def test_validation_rows_and_a_half_written_line_are_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 10, "lr": 0.01, "ce": 1.0, "aux": 0.0, "total": 1.0},
        {"step": 20, "lr": 0.01, "ce": 0.5, "aux": 0.0, "total": 0.5},
        {"step": 20, "val": {"score": 0.4, "dice": {"liver": 0.6, "spleen": 0.2}, "cases": 2}},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"step": 30, "ce"')
    train, val = read_metrics(path)
    assert [row["step"] for row in train] == [10, 20] and val[0]["val"]["score"] == 0.4
    curves = curve_panels(train, val)
    assert _is_png(curves_png("segment/x", curves)) and curves.zero == ["aux"]


def _browser() -> str | None:
    return next((path for name in CHROMIUM if (path := shutil.which(name))), None)


@pytest.mark.skipif(
    _browser() is None,
    reason=f"no headless browser installed (looked for {', '.join(CHROMIUM)} on PATH)",
)
def test_headless_chromium_renders_every_image(work, built, tmp_path):
    browser = _browser()
    page = (work / "report" / "report.html").resolve()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
    ]
    done = subprocess.run(
        [browser, *flags, page.as_uri()],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # the page's own script counts the images that decoded, once the page has loaded
    check = re.search(r'id="render-check"[^>]*data-rendered="(\d*)"', done.stdout)
    assert check is not None, done.stdout[-2000:]
    assert check.group(1) == str(built["images"])


def _section(text: str, title: str) -> str:
    """The Markdown of one ``## title`` section, up to the next one."""
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _md_rows(text: str) -> list[list[str]]:
    """The cells of every table row in ``text`` (the alignment rule left out)."""
    rows = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return [row for row in rows if not set("".join(row)) <= set("-: ")]


def test_per_case_tables_list_every_case_with_the_numbers_of_per_case_csv(work, built):
    text = (work / "report" / "report.md").read_text(encoding="utf-8")
    per_case = _section(text, "Per-case results")
    page = (work / "report" / "report.html").read_text(encoding="utf-8")
    for name, cases in _evaluated_cases(work).items():
        block = per_case.split(f"### {name}: ", 1)[1].split("\n### ", 1)[0]
        head, *rows = _md_rows(block)
        assert [row[0] for row in rows] == [*cases, "mean", "std"]
        per_case_csv = work / "evaluate" / name / "per_case.csv"
        with open(per_case_csv, newline="", encoding="utf-8") as handle:
            for line in csv.DictReader(handle):
                row = rows[cases.index(line["case"])]
                cls = line["class"]
                assert row[head.index(f"{cls} Dice")] == f"{float(line['dice']):.3f}"
                for metric, title in (("assd", "ASSD"), ("hd95", "HD95")):
                    value = float(line[metric])
                    shown = "—" if math.isnan(value) else f"{value:.2f}"
                    assert row[head.index(f"{cls} {title} (mm)")] == shown
        summary_json = work / "evaluate" / name / "summary.json"
        summary = json.loads(summary_json.read_text(encoding="utf-8"))
        mean = summary["mean_over_classes"]["dice"]["mean"]
        assert rows[-2][head.index("mean over classes Dice")] == f"{mean:.3f}"
        # HTML: a collapsible block per run holding its table
        assert f'<details id="per-case-evaluate_{name.replace("+", "_")}"' in page


def test_every_evaluated_case_has_an_overlay_of_each_run(work, built):
    text = (work / "report" / "report.md").read_text(encoding="utf-8")
    predictions = _section(text, "Predictions")
    for name, cases in _evaluated_cases(work).items():
        block = predictions.split(f"### {name}: {len(cases)} cases\n", 1)[1].split("\n### ")[0]
        links = MD_IMAGE.findall(block)
        assert len(links) == len(cases)
        for case in cases:
            assert block.count(f"*evaluate/{name}, case {case}: Dice ") == 1
        for link in links:
            assert _is_png((work / "report" / link).read_bytes())


def _model_of(work: Path, evaluate_run: str) -> dict:
    """The model manifest behind an evaluate run, followed by hand: evaluate -> predict -> model."""
    evaluate = load_manifest(work / "evaluate" / evaluate_run)
    predict = load_manifest(Path(evaluate.inputs["pred"]["path"]))
    model_manifest = Path(predict.inputs["model"]["path"]) / "manifest.json"
    return json.loads(model_manifest.read_text(encoding="utf-8"))


def test_provenance_names_the_pipeline_and_the_model_behind_each_row(work, built):
    summary_json = work / "runs" / "phantom-demo" / "summary.json"
    run_summary = json.loads(summary_json.read_text(encoding="utf-8"))
    assert run_summary["preset"] == "smoke" and run_summary["udaseg_version"]
    assert "git_commit" in run_summary
    assert run_summary["artifacts"]["evaluate/supervised"]["stage"] == "evaluate-supervised"
    text = (work / "report" / "report.md").read_text(encoding="utf-8")
    head, *rows = _md_rows(_section(text, "Provenance"))
    by_run = {row[0]: dict(zip(head, row, strict=False)) for row in rows if row[0] in EVALUATED}
    assert set(by_run) == EVALUATED
    for name, row in by_run.items():
        model = _model_of(work, name)
        config = model["config"]
        assert row["pipeline"].startswith("phantom-demo, stage evaluate-")
        assert row["seed"] == str(config["seed"])
        assert row["steps"].split(" ")[0] == str(model["summary"]["steps"])
        assert row["precision"].startswith(config["precision"])
        commit = model["git_commit"]
        expected = commit.removesuffix("+dirty")[:10] if commit else "no git commit recorded"
        assert expected in row["udaseg"]
    assert "| phantom-demo | smoke |" in text  # the pipeline setups table


def test_a_summary_written_before_the_artifact_index_still_names_its_evaluate_rows(tmp_path):
    from udaseg.reporting.provenance import pipeline_index

    summary = {
        "pipeline": "x.yaml",
        "variables": {"steps": 3},
        "stages": [
            {"stage": "eval-a", "label": "A", "command": "udaseg evaluate --pred p --name a"},
            {"stage": "train", "label": None, "command": "udaseg segment-train --name m"},
        ],
    }
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "summary.json").write_text(json.dumps(summary))
    index, notes = pipeline_index(tmp_path)
    assert list(index) == ["evaluate/a"] and not notes
    assert index["evaluate/a"].label == "A" and not index["evaluate/a"].recorded


def test_curves_draw_every_logged_step_of_a_resumed_run_in_panels_by_kind(tmp_path):
    """Steps 10..2000 logged, then steps 1010..1200 logged again by a resumed run: one
    continuous series per term from the first logged step to the last, nothing subsampled."""

    def row(step: int) -> dict:
        return {
            "step": step,
            "lr": 1e-3 * (1 - step / 2000),
            "seg_source": 1 / step,
            "adv_feat": 0.7,
            "d_feat_s": 0.69,
            "cycle_s": 0.1,
            "total": 2.0,
            "seconds": 1.0,
        }

    rows = [row(s) for s in range(10, 2001, 10)]
    rows[100:100] = [row(s) for s in range(1010, 1201, 10)]  # the resumed run's lines
    val = [{"step": s, "val": {"score": 0.5, "dice": {"liver": 0.5}}} for s in (1000, 2000)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + val), encoding="utf-8")
    train, validation = read_metrics(path)
    curves = curve_panels(train, validation)
    assert (curves.first_step, curves.last_step) == (10, 2000)
    titles = [panel.title for panel in curves.panels]
    assert titles[0] == "objective (total)" and titles[-2:] == ["validation", "learning rate"]
    by_term = {term: s for panel in curves.panels for term, s in panel.series.items()}
    assert {"seg_source", "adv_feat", "d_feat_s", "cycle_s", "lr", "score"} <= set(by_term)
    kinds = {term: p.title for p in curves.panels for term in p.series}
    assert len({kinds["seg_source"], kinds["adv_feat"], kinds["d_feat_s"], kinds["cycle_s"]}) == 4
    for term in ("seg_source", "adv_feat", "total", "lr"):
        steps, values = by_term[term]
        assert list(steps) == list(range(10, 2001, 10)) and len(values) == 200
    assert _is_png(curves_png("segment/x", curves))


def test_curve_captions_give_each_run_s_first_and_last_logged_step(work, built):
    text = _section((work / "report" / "report.md").read_text(encoding="utf-8"), "Training curves")
    for folder in ("translate", "segment", "adapt"):
        for run in (work / folder).iterdir():
            train, val = read_metrics(run / "metrics.jsonl")
            steps = [r["step"] for r in train + val]
            assert f"*{folder}/{run.name} (" in text
            assert f"steps {min(steps)} to {max(steps)}" in text


def test_overlay_slices_spread_over_the_reference_foreground():
    from udaseg.reporting.figures import representative_slices

    label = np.zeros((12, 8, 8), np.uint8)
    label[2:11, 2:6, 2:6] = 1
    label[4, :, :] = 2  # the busiest slice of the first third
    picks = representative_slices(label, 3)
    assert len(picks) == 3 and picks[0] == 4 and picks == sorted(picks)
    assert picks[1] in range(5, 8) and picks[2] in range(8, 11)
    assert representative_slices(np.zeros((9, 4, 4), np.uint8), 3) == [2, 4, 6]
    label[:] = 0
    label[5] = 1
    assert representative_slices(label, 3) == [5]
