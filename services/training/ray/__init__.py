"""Everything that talks to Ray: the service's Jobs-API backend, the per-job runner (the
Ray job's entrypoint), cluster bootstrap, Ray Train loop, driver, evaluation, sweeps."""
