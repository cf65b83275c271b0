"""Accord's protocol core: pure functions over exact bytes.

Nothing in this package does I/O, reads a clock or draws randomness it was not given.
The auditor's tool needs only this package.
"""
