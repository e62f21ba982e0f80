"""Data preparation for fine-tuning: parse, normalize, redact, dedup, split, measure.

Each step is a small pure function in its own module; ``pipeline.prepare`` chains them.
"""
