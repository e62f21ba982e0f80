"""Training-service persistence: SQL tables and the file/dataset blob store."""
