"""Typed async clients, one small class per service, over httpx."""
