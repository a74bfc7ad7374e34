"""``python -m mvae`` runs the command line."""

from .cli import main

main()
