"""docs/settings.md and configs/default.env are what Settings renders, and name every setting.

Both files are generated from ``llm_service.settings.Settings`` so that a setting is
described in one place; these tests fail when someone edits a copy instead of the source,
or adds a setting without regenerating them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_service.settings import Settings
from llm_service.settings_reference import (
    CONTRACT,
    GENERATE_DOCS,
    GENERATE_ENV,
    default_env,
    env_name,
    main,
    settings_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_MD = ROOT / "docs" / "settings.md"
DEFAULT_ENV = ROOT / "configs" / "default.env"


def test_docs_settings_md_is_generated() -> None:
    assert SETTINGS_MD.read_text() == settings_markdown(), f"run {GENERATE_DOCS}"


def test_default_env_is_generated() -> None:
    assert DEFAULT_ENV.read_text() == default_env(), f"run {GENERATE_ENV}"


def test_every_setting_is_in_docs_settings_md() -> None:
    text = SETTINGS_MD.read_text()
    names = [env_name(field) for field in Settings.model_fields]
    missing = [name for name in names if f"`{name}`" not in text]
    assert missing == [], f"run {GENERATE_DOCS}"


def test_contract_first_then_field_order() -> None:
    text = settings_markdown()
    rest = [field for field in Settings.model_fields if field not in CONTRACT]
    positions = [text.index(f"| `{env_name(field)}` |") for field in [*CONTRACT, *rest]]
    assert positions == sorted(positions)


def test_secrets_print_empty() -> None:
    env = default_env()
    fields = Settings.model_fields.items()
    secrets = [field for field, info in fields if "SecretStr" in str(info.annotation)]
    assert secrets
    for field in secrets:
        assert f"# {env_name(field)}=\n" in env


def test_main_prints_either(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out == settings_markdown()
    assert main(["--env"]) == 0
    assert capsys.readouterr().out == default_env()
