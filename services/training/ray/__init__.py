"""Ray-based fine-tuning: cluster bootstrap, Ray Train loop, driver, evaluation."""
