"""Fuzz harnesses (``make fuzz``)."""
