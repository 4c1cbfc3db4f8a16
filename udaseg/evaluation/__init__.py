"""Evaluation below the stages: where predicted and reference label maps come from, how one case
of them is loaded and checked, and the comparison of several evaluate runs.

``udaseg evaluate`` (:mod:`udaseg.stages.evaluate`) scores with these; ``udaseg report`` reads
the very same grids through them, so what it draws is what was scored.
"""
