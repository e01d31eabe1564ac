"""Run the CLI as ``python -m within_db``."""

from within_db.cli import main

main()
