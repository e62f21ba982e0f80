"""Deterministic data sets: labeled samples for demos and tests (:mod:`.samples`), and
sets for measuring fine-tuning quality (:mod:`.quality`)."""
