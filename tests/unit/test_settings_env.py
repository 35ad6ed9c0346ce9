"""The reference's env files and variables work unchanged: quotes, comments, ``export``,
``OPEA_LOGGER_LEVEL``."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_service.settings import ModelServer, Settings, SettingsError

VARIABLES = [
    "LLM_MODEL_NAME", "LLM_MODEL_SERVER", "LLM_MODEL_SERVER_ENDPOINT", "LLM_USVC_PORT",
    "LLM_DISABLE_STREAMING", "LLM_OUTPUT_GUARD_EXISTS", "LLM_TLS_SKIP_VERIFY",
    "LLM_VLLM_API_KEY", "LLM_LOG_LEVEL", "OPEA_LOGGER_LEVEL",
]  # fmt: skip

# The reference's impl/microservice/.env (release 2.1), as it is, then lines in other styles
# an env file may hold.
REFERENCE_ENV = """\
# Copyright (C) 2024-2026 Intel Corporation
# SPDX-License-Identifier: Apache-2.0

## LLM Microservice Settings
LLM_MODEL_NAME="meta-llama/Llama-3.1-8B-Instruct"
LLM_MODEL_SERVER="vllm"
LLM_MODEL_SERVER_ENDPOINT="http://localhost:8008"
LLM_DISABLE_STREAMING="False" # If unset, defaults to "False". To set, value needs to be "True"

## Uncomment to change the microservice port
#LLM_USVC_PORT=9000

## Uncomment to change the microservice log level
# OPEA_LOGGER_LEVEL=INFO
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def test_reference_env_file_loads_unchanged(tmp_path: Path) -> None:
    s = Settings.load(write(tmp_path, REFERENCE_ENV))
    assert s.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert s.model_server is ModelServer.VLLM
    assert s.model_server_endpoint == "http://localhost:8008"
    assert s.disable_streaming is False
    assert s.usvc_port == 9000 and s.log_level == "INFO"  # commented out: the defaults


def test_quoted_unquoted_export_and_comments(tmp_path: Path) -> None:
    text = (
        "# a comment line\n"
        'export LLM_MODEL_NAME="mistralai/Mistral-7B"\n'
        "LLM_MODEL_SERVER='VLLM'\n"
        "LLM_MODEL_SERVER_ENDPOINT=http://localhost:8008 # unquoted, with a comment\n"
        "export LLM_USVC_PORT=9100\n"
        'LLM_DISABLE_STREAMING="True"\n'
        "LLM_OUTPUT_GUARD_EXISTS=True\n"
        "OPEA_LOGGER_LEVEL=DEBUG\n"
    )
    s = Settings.load(write(tmp_path, text))
    assert s.model_name == "mistralai/Mistral-7B"
    assert s.model_server is ModelServer.VLLM
    assert s.model_server_endpoint == "http://localhost:8008"
    assert s.usvc_port == 9100
    assert s.disable_streaming and s.output_guard_exists
    assert s.log_level == "DEBUG"


def test_quotes_kept_by_docker_env_file_are_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    """``docker run --env-file`` passes a line's value on as it is, quotes and comment."""
    monkeypatch.setenv("LLM_MODEL_NAME", '"meta-llama/Llama-3.1-8B-Instruct"')
    monkeypatch.setenv("LLM_MODEL_SERVER", '"vllm"')
    monkeypatch.setenv("LLM_MODEL_SERVER_ENDPOINT", "'http://localhost:8008'")
    monkeypatch.setenv(
        "LLM_DISABLE_STREAMING",
        '"True" # If unset, defaults to "False". To set, value needs to be "True"',
    )
    monkeypatch.setenv("LLM_USVC_PORT", '"9100"')
    monkeypatch.setenv("LLM_VLLM_API_KEY", '"sk-quoted"')
    s = Settings.load()
    assert s.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert s.model_server is ModelServer.VLLM
    assert s.model_server_endpoint == "http://localhost:8008"
    assert s.disable_streaming is True
    assert s.usvc_port == 9100
    assert s.vllm_api_key is not None and s.vllm_api_key.get_secret_value() == "sk-quoted"


def test_quotes_inside_a_value_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MODEL_NAME", 'my "quoted" model')
    assert Settings.load().model_name == 'my "quoted" model'
    monkeypatch.setenv("LLM_MODEL_NAME", '"half')
    assert Settings.load().model_name == '"half'


def test_opea_logger_level_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPEA_LOGGER_LEVEL", "DEBUG")
    assert Settings.load().log_level == "DEBUG"


def test_llm_log_level_wins_over_opea_logger_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPEA_LOGGER_LEVEL", "DEBUG")
    monkeypatch.setenv("LLM_LOG_LEVEL", "ERROR")
    assert Settings.load().log_level == "ERROR"


def test_process_environment_wins_over_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPEA_LOGGER_LEVEL", "WARNING")
    assert Settings.load(write(tmp_path, "LLM_LOG_LEVEL=INFO\n")).log_level == "WARNING"


@pytest.mark.parametrize(
    ("value", "level"),
    [("warn", "WARNING"), ("FATAL", "CRITICAL"), ("CRITICAL", "CRITICAL"), ("info", "INFO")],
)
def test_python_logging_level_names(
    monkeypatch: pytest.MonkeyPatch, value: str, level: str
) -> None:
    monkeypatch.setenv("OPEA_LOGGER_LEVEL", value)
    assert Settings.load().log_level == level


def test_bad_opea_logger_level_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPEA_LOGGER_LEVEL", "LOUD")
    with pytest.raises(SettingsError, match=r"LLM_LOG_LEVEL or OPEA_LOGGER_LEVEL: .*'LOUD'"):
        Settings.load()


def test_log_level_keyword_still_works() -> None:
    assert Settings(_env_file=None, log_level="warning").log_level == "WARNING"
