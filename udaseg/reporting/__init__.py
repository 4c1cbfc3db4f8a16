"""The workspace report below its stage (:mod:`udaseg.stages.report`).

Modules, in the order a report is made: :mod:`~udaseg.reporting.discovery` (what the workspace
holds), :mod:`~udaseg.reporting.sections` (the sections in reading order) with
:mod:`~udaseg.reporting.curves` (training curves), :mod:`~udaseg.reporting.results` (comparison,
per-case tables, Dice box plots), :mod:`~udaseg.reporting.provenance` (how each result was made)
and :mod:`~udaseg.reporting.predictions` (every evaluated case over its reference), with pictures
from :mod:`~udaseg.reporting.figures`; :mod:`~udaseg.reporting.document` (the content they fill
in) and :mod:`~udaseg.reporting.render` (Markdown and HTML, with the page's stylesheet and script
from :mod:`~udaseg.reporting.assets`).
"""
