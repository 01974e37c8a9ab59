"""Settings: every one is documented, and the environment really drives them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from image2model.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def env_name(field: str, settings_cls: type[Settings] = Settings) -> str:
    alias = settings_cls.model_fields[field].validation_alias
    if alias is None:
        return field.upper()
    return str(alias) if isinstance(alias, str) else str(alias.choices[0])


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_env_example_and_readme(field: str) -> None:
    name = env_name(field)
    example = (ROOT / ".env.example").read_text()
    assert f"\n{name}=" in example, f"{name} missing from .env.example"
    assert f"`{name}`" in (ROOT / "README.md").read_text(), f"{name} missing from the README"


def test_environment_drives_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAX_IMAGES", "7")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/0")
    monkeypatch.setenv("PORT", "9999")
    settings = Settings(_env_file=None)
    assert settings.max_images == 7 and settings.data_dir == tmp_path.resolve()
    assert settings.use_redis and not settings.run_embedded_worker
    assert settings.port == 9999
    assert "example" not in repr(settings), "secrets must not appear in reprs or logs"


def test_embedded_defaults_need_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "REDIS_URL", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert not settings.fal_configured and not settings.use_redis and settings.run_embedded_worker


def test_env_example_copied_to_dot_env_works(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What the README suggests: cp .env.example .env, edit a line, run."""
    for name in ("FAL_KEY", "REDIS_URL", "DATA_DIR", "PORT", "GRADIO_SERVER_PORT", "EMBEDDED_WORKER"):
        monkeypatch.delenv(name, raising=False)
    text = (ROOT / ".env.example").read_text().replace("PORT=7860", "PORT=7995")
    (tmp_path / ".env").write_text(text)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.port == 7995
    assert settings.embedded_worker is None and settings.run_embedded_worker
    assert settings.data_dir.name == "data", "an empty DATA_DIR= must mean the default, not the current folder"


def test_gradio_server_port_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    assert Settings(_env_file=None).port == 7999


def test_rate_limits_turn_off_with_off_and_keep_their_default_when_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    from image2model.web.security import RateLimiter

    monkeypatch.setenv("RATE_LIMIT_API", "off")
    monkeypatch.setenv("RATE_LIMIT_UPLOAD", "")  # `NAME=` as in .env.example: the default
    settings = Settings(_env_file=None)
    limiter = RateLimiter(settings)
    assert limiter.groups["api"] == []
    assert [str(item) for item in limiter.groups["upload"]] == ["10 per 1 minute"]


def test_an_unreadable_rate_limit_stops_the_app_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATE_LIMIT_API", "100 a minute please")
    with pytest.raises(ValueError, match="RATE_LIMIT_API|rate_limit_api"):
        Settings(_env_file=None)


def test_log_level_is_checked_at_start_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "verbose")
    with pytest.raises(ValueError, match="log_level") as caught:
        Settings(_env_file=None)
    assert "DEBUG" in str(caught.value)  # the message lists what it may be
    monkeypatch.setenv("LOG_LEVEL", " debug ")
    assert Settings(_env_file=None).log_level == "DEBUG"


@pytest.mark.parametrize("command", [["app.py"], ["tests/consumer_process.py", "-w", "1"],
                                     ["-m", "image2model.healthcheck", "web"]],
                         ids=["web", "consumer", "healthcheck"])
def test_a_bad_setting_stops_each_process_in_words_without_a_traceback(tmp_path: Path, command: list[str]) -> None:
    """Found from outside (fourth round): the pydantic message came inside a 15-line traceback."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PORT="abc", RATE_LIMIT_API="lots", DATA_DIR=str(tmp_path / "data"))
    run = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("image2model cannot start"), lines
    assert any(line.strip().startswith("PORT='abc'") and "integer" in line for line in lines), lines
    assert any(line.strip().startswith("RATE_LIMIT_API='lots'") for line in lines), lines
    assert len(lines) == 3, lines
