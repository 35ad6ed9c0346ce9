"""Settings: the seed's variable names, env files, and start-up errors naming the variable."""

from __future__ import annotations

import pytest

from llm_service.settings import ModelServer, Settings, SettingsError
from tests.support import ROOT

SEED_VARS = [
    "LLM_MODEL_NAME", "LLM_MODEL_SERVER", "LLM_MODEL_SERVER_ENDPOINT", "LLM_USVC_PORT",
    "LLM_DISABLE_STREAMING", "LLM_OUTPUT_GUARD_EXISTS", "LLM_TLS_SKIP_VERIFY",
    "LLM_VLLM_API_KEY", "LLM_VLLM_CLIENT_ID", "LLM_VLLM_CLIENT_SECRET", "LLM_VLLM_TOKEN_URL",
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SEED_VARS:
        monkeypatch.delenv(name, raising=False)


def test_seed_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "LLM_MODEL_NAME": "mistralai/Mistral-7B-Instruct-v0.1",
        "LLM_MODEL_SERVER": "VLLM",
        "LLM_MODEL_SERVER_ENDPOINT": "http://localhost:8008/",
        "LLM_USVC_PORT": "9100",
        "LLM_DISABLE_STREAMING": "True",
        "LLM_OUTPUT_GUARD_EXISTS": "true",
        "LLM_TLS_SKIP_VERIFY": "1",
        "LLM_VLLM_API_KEY": "sk-secret-key",
        "LLM_VLLM_CLIENT_ID": "client",
        "LLM_VLLM_CLIENT_SECRET": "oauth-secret",
        "LLM_VLLM_TOKEN_URL": "https://keycloak.local/token",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings.load()
    assert s.model_name == "mistralai/Mistral-7B-Instruct-v0.1"
    assert s.model_server is ModelServer.VLLM
    assert s.model_server_endpoint == "http://localhost:8008"
    assert s.usvc_port == 9100
    assert s.disable_streaming and s.output_guard_exists and s.tls_skip_verify
    assert s.vllm_client_id == "client"
    assert s.vllm_token_url == "https://keycloak.local/token"
    assert s.vllm_api_key is not None and s.vllm_api_key.get_secret_value() == "sk-secret-key"
    assert "sk-secret-key" not in repr(s) and "oauth-secret" not in repr(s)
    assert not s.embedded


def test_defaults_equal_default_env() -> None:
    assert Settings.load() == Settings.load(ROOT / "configs" / "default.env")
    assert Settings.load().embedded


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.env")))
def test_every_shipped_env_file_loads(name: str) -> None:
    Settings.load(ROOT / "configs" / name)


def test_environment_wins_over_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MODEL_NAME", "from-env")
    s = Settings.load(ROOT / "configs" / "vllm.env")
    assert s.model_name == "from-env"
    assert s.model_server is ModelServer.VLLM


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("LLM_MODEL_SERVER", "triton", "Input should be 'vllm', 'tgi', 'ray', 'llamacpp'"),
        ("LLM_MODEL_SERVER_ENDPOINT", "localhost:8008", "not an http(s) URL"),
        ("LLM_MODEL_SERVER_ENDPOINT", "http://host:99999", "invalid port"),
        ("LLM_VLLM_TOKEN_URL", "ftp://x/token", "not an http(s) URL"),
        ("LLM_USVC_PORT", "70000", "less than or equal to 65535"),
        ("LLM_USVC_PORT", "0", "greater than or equal to 1"),
        ("LLM_USVC_PORT", "ninety", "valid integer"),
        ("LLM_DISABLE_STREAMING", "maybe", "valid boolean"),
        ("LLM_OUTPUT_GUARD_EXISTS", "2", "valid boolean"),
        ("LLM_TLS_SKIP_VERIFY", "yes please", "valid boolean"),
        ("LLM_UPSTREAM_TRANSPORT", "h2", "Input should be 'lean' or 'aiohttp'"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        Settings.load()
    message = str(info.value)
    assert f"{name}: " in message and reason in message


def test_secrets_are_masked_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_VLLM_API_KEY", "x" * 10)
    monkeypatch.setenv("LLM_USVC_PORT", "-1")
    with pytest.raises(SettingsError) as info:
        Settings.load()
    assert "xxxxxxxxxx" not in str(info.value)


def test_missing_env_file_is_an_error() -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        Settings.load("configs/nope.env")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LLM_ROUTING": "least_inflight", "LLM_ROUTING_BALANCE": "1.2"}, "LLM_ROUTING_BALANCE"),
        ({"LLM_ROUTING": "least_inflight", "LLM_ROUTING_SESSION_HEADER": "X-U"}, "SESSION_HEADER"),
        ({"LLM_REPLICA_REFRESH": "3"}, "LLM_REPLICA_REFRESH"),
        ({"LLM_REPLICA_DNS_SERVER": "10.0.0.2"}, "LLM_REPLICA_DNS_SERVER"),
    ],
)
def test_a_knob_of_a_policy_not_chosen_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named):
        Settings.load()


def test_knobs_spelled_out_at_their_defaults_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    # configs/default.env writes every setting out, the routing knobs included.
    monkeypatch.setenv("LLM_ROUTING", "least_inflight")
    monkeypatch.setenv("LLM_ROUTING_BALANCE", "1.5")
    monkeypatch.setenv("LLM_REPLICA_REFRESH", "10")
    assert Settings.load().routing == "least_inflight"
    assert Settings.load("configs/default.env").replica_discovery == "static"
