"""``udaseg report W``: one page that shows what a workspace holds, as HTML and as Markdown.

This module is the stage: it finds the artifacts (:mod:`udaseg.reporting.discovery`), builds the
sections (:mod:`udaseg.reporting.sections`), renders them (:mod:`udaseg.reporting.render`) and
publishes ``W/report/`` as an artifact.

Artifacts are found by reading the ``manifest.json`` of every ``W/<folder>/<run>/`` (the stage it
names decides what it is, never the folder's name); ``.partial`` folders are listed as unfinished.
Sections, each present only when its artifacts exist (otherwise a line says what is missing):

* **Data**: the first case of every ``preprocess`` store, at the slice with the most labelled
  voxels (the middle slice when unlabelled), labels drawn over it; the same for every
  ``pseudo-label`` store (voxels left unlabelled are not coloured);
* **Translator**: the newest ``samples/step_N.png`` of every ``translate-train`` run (rows
  source / translated / reconstructed / target, a column per sample or style) and the
  ``styles.png`` of every ``cluster-styles`` run (style embedding + the source in each style);
* **Training curves**: every logged step of every ``translate-train``, ``segment-train`` and
  ``adapt`` run's ``metrics.jsonl``, one panel per kind of loss term, the validation score and
  Dice per class, and the learning rate (:mod:`udaseg.reporting.curves`);
* **Comparison**: one row per ``evaluate`` run: mean Dice per class, mean Dice, mean ASSD and HD95;
* **Provenance**: per row, the pipeline run (preset, variables), the predict run and the model
  behind it (stage, method, steps, seed, precision, udaseg version and commit), and what the model
  was built from (:mod:`udaseg.reporting.provenance`);
* **Per-case results**: per ``evaluate`` run (a collapsible block), its ``per_case.csv`` with
  the mean and std rows of its ``summary.json``;
* **Dice per class**: box plots of the per-case Dice of every ``evaluate`` run;
* **Predictions**: per reference, the first case with every run side by side; per run, one picture
  per evaluated case at 3 slices spread over the reference foreground, the prediction filled and
  the reference outlined in the label tables' class colours, read through the readers ``udaseg
  evaluate`` used (so the grids are the ones that were scored;
  :mod:`udaseg.reporting.predictions`).

Output ``W/report/`` (an artifact, built in ``W/report.partial/`` and renamed when complete)::

    report.html    self-contained: images as data:image/png;base64 URIs, inline CSS, and a tiny
                   inline script that writes how many images rendered into #render-check
    report.md      the same text and tables; images linked as figures/<name>.png
    figures/*.png  the pictures
    manifest.json  stage "report"; inputs: every artifact the report shows
"""

from __future__ import annotations

import time
from pathlib import Path

from udaseg import __version__, artifacts, layout
from udaseg.config.report import ReportConfig
from udaseg.progress import Progress
from udaseg.reporting.discovery import discover
from udaseg.reporting.render import render_html, render_markdown
from udaseg.reporting.sections import build_sections

STAGE = ReportConfig.STAGE
# bump when the same workspace would give a different report
REPORT_VERSION = 2


def output_dir(work: Path) -> Path:
    return layout.stage_dir(work, layout.REPORT)


def run(
    config: ReportConfig, work: Path, *, force: bool = False, progress: Progress | None = None
) -> artifacts.Manifest:
    """Write ``W/report/`` (report.html, report.md, figures/); returns its manifest, whose
    summary names the files and counts the sections, images and evaluated runs.

    A workspace with nothing in it still gets a report that says what is missing.

    Raises:
        UdasegError: ``work`` does not exist (exit code 2).
    """
    started = time.perf_counter()
    workspace = discover(work, skip=(STAGE,))
    sections = build_sections(workspace)
    out = output_dir(work)
    title = f"udaseg report: {Path(work).resolve().name}"
    meta = (
        f"Workspace {Path(work).resolve()}, udaseg {__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}."
    )
    images = sum(len(s.all_pictures()) for s in sections)
    inputs = {
        a.key: artifacts.input_record(a.path, a.manifest)
        for runs in workspace.by_stage.values()
        for a in runs
    }
    summary = {
        "output": str(out.resolve()),
        "html": str((out / layout.REPORT_HTML).resolve()),
        "markdown": str((out / layout.REPORT_MARKDOWN).resolve()),
        "images": images,
        "sections": {
            s.key: {
                "title": s.title,
                "images": len(s.all_pictures()),
                "tables": len(s.tables) + sum(len(g.tables) for g in s.groups),
                "notes": s.notes + [f"{g.title}: {n}" for g in s.groups for n in g.notes],
            }
            for s in sections
        },
        "sections_with_content": sum(
            bool(s.all_pictures() or s.tables or s.groups) for s in sections
        ),
        "artifacts": sum(len(runs) for runs in workspace.by_stage.values()),
        "evaluate_runs": len(workspace.runs("evaluate")),
    }
    with artifacts.building(out) as tmp:
        (tmp / layout.FIGURES).mkdir()
        for section in sections:
            for picture in section.all_pictures():
                (tmp / layout.FIGURES / picture.name).write_bytes(picture.png)
        markdown, page = render_markdown(title, meta, sections), render_html(title, meta, sections)
        (tmp / layout.REPORT_MARKDOWN).write_text(markdown, encoding="utf-8")
        (tmp / layout.REPORT_HTML).write_text(page, encoding="utf-8")
        summary["seconds"] = round(time.perf_counter() - started, 2)
        return artifacts.publish(
            tmp,
            out,
            stage=STAGE,
            config={"work": str(Path(work).resolve()), "report_version": REPORT_VERSION},
            inputs=inputs,
            summary=summary,
        )
