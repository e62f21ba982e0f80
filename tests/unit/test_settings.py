"""Settings fail fast and name the variable; the internal token file is private and shared."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.inference.settings import InferenceSettings
from services.registry.settings import RegistrySettings
from shared.settings import load_settings


def test_bad_variable_is_named_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TUNEFLEET_REGISTRY_PORT", "not-a-port")
    with pytest.raises(SystemExit) as exc:
        load_settings(RegistrySettings)
    assert exc.value.code == 2
    assert "TUNEFLEET_REGISTRY_PORT" in capsys.readouterr().err


def test_cross_field_rule_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TUNEFLEET_INFERENCE_MAX_LORAS", "16")
    monkeypatch.setenv("TUNEFLEET_INFERENCE_MAX_CPU_LORAS", "4")
    with pytest.raises(SystemExit):
        load_settings(InferenceSettings)
    assert "max_cpu_loras must be >= max_loras" in capsys.readouterr().err


def test_home_is_not_read_from_the_HOME_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNEFLEET_HOME", raising=False)
    monkeypatch.setenv("HOME", "/somewhere/else")
    assert RegistrySettings().home == Path("./var")


def test_generated_token_is_private_and_stable(tmp_path: Path) -> None:
    s = RegistrySettings(home=tmp_path)
    token = s.resolved_token()
    assert token == RegistrySettings(home=tmp_path).resolved_token()
    mode = stat.S_IMODE((tmp_path / "internal_token").stat().st_mode)
    assert mode == 0o600


def test_service_refuses_to_start_with_bad_config(tmp_path: Path) -> None:
    env = {**os.environ, "TUNEFLEET_HOME": str(tmp_path), "TUNEFLEET_REGISTRY_MAX_LORA_RANK": "0"}
    r = subprocess.run(
        [sys.executable, "-m", "services.registry"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "TUNEFLEET_REGISTRY_MAX_LORA_RANK" in r.stderr and "Traceback" not in r.stderr


def test_engine_config_carries_every_engine_setting(tmp_path: Path) -> None:
    """One function turns InferenceSettings into the engine's config, for the standalone
    service and the Ray Serve replicas alike: every EngineConfig field that has a settings
    field of the same name comes from it (a new one cannot be dropped silently)."""
    from dataclasses import fields

    from services.inference.engine.base import EngineConfig
    from services.inference.settings import engine_config

    settings = InferenceSettings(
        home=tmp_path,
        model_dir=tmp_path / "m",
        base_model="b",
        max_model_len=333,
        max_loras=3,
        max_cpu_loras=5,
        max_lora_rank=7,
        kv_cache_gib=2.5,
        max_num_seqs=9,
        device="cpu",
        fast_cpu_lora=False,
    )
    config = engine_config(settings)
    shared = {f.name for f in fields(EngineConfig)} & set(InferenceSettings.model_fields)
    assert {"fast_cpu_lora", "max_loras", "device"} <= shared
    for name in shared:
        assert getattr(config, name) == getattr(settings, name), name
    assert (config.model_path, config.model_id) == (tmp_path / "m", "b")
