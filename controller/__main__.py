"""`python -m controller` runs the mlcanary CLI (the same as the `mlcanary` command)."""

from controller.cli.main import main

main()
