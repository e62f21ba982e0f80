"""Pydantic wire models shared by services and clients (the REST contract in code)."""
