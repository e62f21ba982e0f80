"""Inference service: serves many hot-swappable LoRA adapters on one base model."""
