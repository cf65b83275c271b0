"""Soak test (``make soak``)."""
