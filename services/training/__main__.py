"""``python -m services.training`` — run the training service (settings from the env)."""

from __future__ import annotations

from services.training.app import create_app
from services.training.settings import TrainingSettings
from shared.serve import serve
from shared.settings import load_settings


def main() -> None:
    settings = load_settings(TrainingSettings)
    serve("training", create_app(settings), settings)


if __name__ == "__main__":
    main()
