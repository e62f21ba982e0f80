"""``python -m services.registry`` — run the adapter registry (settings from the env)."""

from __future__ import annotations

from services.registry.app import create_app
from services.registry.settings import RegistrySettings
from shared.serve import serve
from shared.settings import load_settings


def main() -> None:
    settings = load_settings(RegistrySettings)
    serve("registry", create_app(settings), settings)


if __name__ == "__main__":
    main()
