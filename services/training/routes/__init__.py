"""HTTP routes of the training service: they translate HTTP to domain calls, nothing more."""
