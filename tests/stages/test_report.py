"""`udaseg report`: a self-contained HTML page and a Markdown file of a whole workspace.

The workspace is the phantom-demo pipeline's smoke preset: every stage for 2 iterations on the
tiny phantom (~15 s on 2 CPU cores), built once for the module.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from udaseg.artifacts import load_manifest
from udaseg.cli import app, main
from udaseg.config.report import ReportConfig
from udaseg.pipeline import runner as pipelines
from udaseg.reporting.discovery import read_metrics
from udaseg.reporting.figures import curves_png
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


def test_every_section_with_artifacts_has_its_pictures(work, built):
    trained = [p for folder in ("translate", "segment", "adapt") for p in (work / folder).iterdir()]
    images = {key: s["images"] for key, s in built["sections"].items()}
    assert images == {
        "workspace": 0,
        "data": 1,  # one picture, a panel per store
        "translator": 3,  # two translators' sample grids and the style plot
        "curves": len(trained),
        "predictions": 1,  # every run is scored against the same raw MR labels
        "dice": 1,
        "comparison": 0,
    }
    assert not built["sections"]["translator"]["notes"]
    assert not built["sections"]["predictions"]["notes"]


def test_comparison_table_has_every_evaluated_run_with_its_numbers(work, built):
    text = (work / "report" / "report.md").read_text(encoding="utf-8")
    table = text.split("## Comparison", 1)[1]
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
    assert predictions == {"title": "Predictions", "images": 2, "notes": []}
    text = (other / "report" / "report.md").read_text(encoding="utf-8")
    assert text.count("no scan image") == 1


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
    png, zero = curves_png("segment/x", train, val)
    assert _is_png(png) and zero == ["aux"]


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
