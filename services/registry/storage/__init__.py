"""Registry persistence: SQL tables and the content-addressed artifact store."""
