"""``python -m gateway`` — the public gateway (settings from the environment)."""

from __future__ import annotations

from gateway.app import create_app
from gateway.settings import GatewaySettings
from shared.serve import serve
from shared.settings import load_settings


def main() -> None:
    settings = load_settings(GatewaySettings)
    serve("gateway", create_app(settings), settings)


if __name__ == "__main__":
    main()
