"""Generated Python code of the Accord wire contract (``proto/accord/v1/*.proto``).

Generated, never edited by hand: regenerate with ``make proto`` (``python -m tools.protogen``).
A test fails when this folder is stale. Only one hand-written module converts these
messages to domain types; nothing else imports them.
"""
