"""The embedded llama.cpp child keeps none of the service's secrets and answers only the
service: it inherits a short list of variables, and wants a per-process random key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm_service.upstream.embedded import EmbeddedServer, child_environment
from tests.support.servers import ServiceServer, settings_for

MODEL = "SmolLM2-135M-Instruct"
SECRETS = {
    "LLM_VLLM_API_KEY": "remote-server-key",
    "LLM_VLLM_CLIENT_SECRET": "oauth-secret",
    "LLM_API_KEYS": "inbound-key",
    "AWS_SECRET_ACCESS_KEY": "cloud-secret",
}
INBOUND = {"Authorization": "Bearer inbound-key"}


pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceServer]:
    """The service starting its own embedded child, in an environment holding secrets."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in SECRETS.items():
            env.setenv(name, value)
        env.setenv("OMP_NUM_THREADS", "1")  # passes: the operator's CPU limit
        server = ServiceServer(settings_for(None, model_server="llamacpp", model_name=MODEL))
    yield server
    server.close()


def child(service: ServiceServer) -> EmbeddedServer:
    embedded = service.app.state.embedded
    assert isinstance(embedded, EmbeddedServer) and embedded.pid is not None
    return embedded


def proc(pid: int, name: str) -> list[str]:
    return [v.decode() for v in Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0") if v]


def test_the_child_inherits_no_secret(service: ServiceServer) -> None:
    embedded = child(service)
    assert embedded.pid is not None
    environ = dict(v.split("=", 1) for v in proc(embedded.pid, "environ"))
    assert [name for name in environ if name.startswith("LLM_")] == []
    assert "AWS_SECRET_ACCESS_KEY" not in environ
    assert not set(SECRETS.values()) & set(environ.values())
    assert environ["OMP_NUM_THREADS"] == "1" and "PATH" in environ
    assert environ["API_KEY"] == embedded.api_key  # its own key, and nothing else of ours
    # The key is not on its command line, which every local user can read.
    assert embedded.api_key and embedded.api_key not in " ".join(proc(embedded.pid, "cmdline"))


def test_the_child_answers_only_with_its_key(service: ServiceServer) -> None:
    embedded = child(service)
    assert embedded.api_key is not None and len(embedded.api_key) >= 32
    models = f"{embedded.url}/v1/models"
    assert httpx.get(models).status_code == 401
    assert (
        httpx.get(models, headers={"Authorization": "Bearer remote-server-key"}).status_code == 401
    )
    assert httpx.get(models, headers=embedded.headers).status_code == 200
    for path in ("/v1/chat/completions", "/extras/tokenize/count"):
        assert httpx.post(f"{embedded.url}{path}", json={}).status_code == 401


def test_the_service_sends_the_childs_key(service: ServiceServer) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": False}
    resp = httpx.post(f"{service.url}/v1/chat/completions", json=body, headers=INBOUND, timeout=60)
    assert resp.status_code == 200, resp.text
    docs = [{"text": "Deep learning uses neural networks.", "metadata": {"url": "https://x.org"}}]
    streamed = {"question": "What is deep learning?", "reranked_docs": docs, "max_tokens": 4}
    resp = httpx.post(
        f"{service.url}/v1/chat/completions", json=streamed, headers=INBOUND, timeout=60
    )  # through the token budget's tokenizer calls too
    assert resp.status_code == 200 and "data: [DONE]" in resp.text
    assert httpx.get(f"{service.url}/v1/ready", headers=INBOUND).status_code == 200


def test_child_environment_keeps_only_the_listed_variables() -> None:
    environ = {
        "PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "LC_ALL": "C", "TMPDIR": "/t",
        "VIRTUAL_ENV": "/v", "OMP_NUM_THREADS": "2", "GGML_X": "1", "LLAMA_CPP_LIB_PATH": "/l",
        "OPENBLAS_NUM_THREADS": "2", "LLM_VLLM_API_KEY": "k", "HOST": "0.0.0.0", "PORT": "80",
        "MODEL": "/other.gguf", "CONFIG_FILE": "/c", "API_KEY": "theirs", "CMAKE_ARGS": "-D",
    }  # fmt: skip
    env = child_environment(environ, "ours")
    assert env == {
        "PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "LC_ALL": "C", "TMPDIR": "/t",
        "VIRTUAL_ENV": "/v", "OMP_NUM_THREADS": "2", "GGML_X": "1", "LLAMA_CPP_LIB_PATH": "/l",
        "OPENBLAS_NUM_THREADS": "2", "API_KEY": "ours",
    }  # fmt: skip
    assert "API_KEY" not in child_environment(environ, None)
