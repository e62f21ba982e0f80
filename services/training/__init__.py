"""Training service: data preparation (``data/``), and later the Ray driver and train loop."""
