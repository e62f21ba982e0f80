"""Deterministic data sets for measuring fine-tuning quality (see :mod:`.quality`)."""
