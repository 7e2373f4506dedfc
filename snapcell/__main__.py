"""`python -m snapcell` runs the CLI."""

from .cli import main

main()
