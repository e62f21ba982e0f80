"""tiny-llama: deterministic local base model (corpus, tokenizer, pretraining, build)."""

MODEL_NAME = "tiny-llama"
