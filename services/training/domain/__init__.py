"""Training domain logic: files and datasets, jobs, hyperparameters, Ray backend, lifecycle.
Knows nothing of FastAPI; raises ``shared.errors`` domain errors."""
