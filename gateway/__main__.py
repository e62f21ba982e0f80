"""``python -m gateway`` — the public gateway (settings from the environment)."""

from __future__ import annotations

from gateway.app import create_app
from gateway.settings import GatewaySettings
from shared.serve import serve
from shared.settings import load_settings


def main() -> None:
    settings = load_settings(GatewaySettings)
    hsts = settings.hsts_header()
    serve(
        "gateway",
        create_app(settings),
        settings,
        tls=settings.tls_files(),
        headers=[("strict-transport-security", hsts)] if hsts else None,
    )


if __name__ == "__main__":
    main()
