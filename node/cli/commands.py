"""Imports every command module so each registers itself on the root group."""

from node.cli import node_cmds  # noqa: F401
