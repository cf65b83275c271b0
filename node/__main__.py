"""``python -m node`` runs the ``accord`` CLI."""

from node.cli import main

main()
