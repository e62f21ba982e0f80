"""``python -m tests.support.digest_replica``: the real inference app as a process (settings
from the ``TUNEFLEET_INFERENCE_*`` env, uvicorn, SIGTERM drain) whose engine is
``DigestEngine`` instead of vLLM, for fleet tests with several replicas on a 2-core box.
``TUNEFLEET_TEST_ENGINE_DELAY_S``: seconds each generation takes (default 0.01)."""

from __future__ import annotations

import os

from services.inference.__main__ import _run
from services.inference.app import create_app
from services.inference.settings import InferenceSettings
from shared.logging import configure_logging
from shared.settings import load_settings
from tests.support.digest_engine import DigestEngine


def main() -> None:
    from transformers import AutoTokenizer

    settings = load_settings(InferenceSettings)
    configure_logging("inference", settings.log_level, json_format=settings.log_json)
    delay = float(os.environ.get("TUNEFLEET_TEST_ENGINE_DELAY_S", "0.01"))
    engine = DigestEngine(AutoTokenizer.from_pretrained(str(settings.base_dir())), delay_s=delay)
    _run(create_app(settings, engine), settings)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
