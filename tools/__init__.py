"""Developer tools run from a checkout, not part of the installed node: ``python -m
tools.protogen`` (``make proto``) and ``python -m tools.demo`` (``make demo``)."""
