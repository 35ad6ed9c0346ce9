"""The command line: serve refuses bad settings; check and prompt report without serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.servers import FakeServer, free_port

pytestmark = pytest.mark.system


def run(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    return subprocess.run(
        [sys.executable, "-m", "llm_service", *args],
        input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT, env={**clean, **env},
    )  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "check", "prompt"])
def test_help(command: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0 and "--env-file" in proc.stdout


def test_bad_setting_stops_every_command() -> None:
    for command in ("serve", "check"):
        proc = run(command, LLM_USVC_PORT="70000")
        assert proc.returncode == 2
        assert "LLM_USVC_PORT: Input should be less than or equal to 65535" in proc.stderr


@pytest.mark.embedded
def test_check_reports_reachable_and_unreachable(fake_server: FakeServer) -> None:
    good = run("check", LLM_MODEL_SERVER_ENDPOINT=fake_server.url, LLM_MODEL_SERVER="vllm",
               LLM_MODEL_NAME="fake-model")  # fmt: skip
    assert good.returncode == 0, good.stdout
    assert "[ok] model server" in good.stdout and "context window: 4096" in good.stdout
    down = run("check", LLM_MODEL_SERVER_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "[FAIL] model server" in down.stdout
    embedded = run("check")
    assert embedded.returncode == 0 and "embedded model file" in embedded.stdout


def test_prompt_renders_without_a_model() -> None:
    doc = {"text": "DL...", "metadata": {"url": "u", "citation_id": 7}}
    body = {"question": "Co to jest {DL}?", "prompt_template": "pl", "reranked_docs": [doc]}
    proc = run("prompt", stdin=json.dumps(body))
    assert proc.returncode == 0, proc.stderr
    system, user = json.loads(proc.stdout)
    assert "### Wyniki wyszukiwania:\n[7] (u)\nContent: DL..." in system["content"]
    assert user["content"].startswith("### Pytanie: Co to jest {DL}?")
    bad = run("prompt", stdin=json.dumps({"question": "q", "prompt_template": "nope"}))
    assert bad.returncode == 2 and "unknown prompt template 'nope'" in bad.stderr
