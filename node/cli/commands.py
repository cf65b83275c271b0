"""Imports every command module so each registers itself on the root group."""

from node.cli import (
    agreement_cmds,  # noqa: F401
    feed_cmds,  # noqa: F401
    keys_cmds,  # noqa: F401
    log_cmds,  # noqa: F401
    loop_cmds,  # noqa: F401
    node_cmds,  # noqa: F401
    officer_cmds,  # noqa: F401
    report_cmds,  # noqa: F401
    report_new,  # noqa: F401
    serve_cmds,  # noqa: F401
    watch_cmds,  # noqa: F401
)
