"""The workspace report below its stage (:mod:`udaseg.stages.report`).

Modules, in the order a report is made: :mod:`~udaseg.reporting.discovery` (what the workspace
holds), :mod:`~udaseg.reporting.sections` and :mod:`~udaseg.reporting.results` (the sections,
with pictures from :mod:`~udaseg.reporting.figures`), :mod:`~udaseg.reporting.document` (the
content they fill in) and :mod:`~udaseg.reporting.render` (Markdown and HTML, with the page's
stylesheet and script from :mod:`~udaseg.reporting.assets`).
"""
