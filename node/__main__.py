"""``python -m node`` runs the ``accord`` CLI."""

from node.cli import main

if __name__ == "__main__":  # import-safe: the audit verifier's worker processes import it
    main()
