"""``python -m udaseg``: the same command line as ``udaseg``."""

from udaseg.cli import main

main()
