"""Child processes of the benchmark: started pinned, watched, and always stopped."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKENS = 64  # tokens per answer of the fake upstream, and max_tokens of every request
# Environment variables that would change what is measured or send data off the machine.
DROPPED_ENV = (
    "LANGCHAIN_TRACING_V2",
    "LANGCHAIN_TRACING",
    "LANGSMITH_TRACING",
    "LANGSMITH_TRACING_V2",
)


class BenchError(RuntimeError):
    """A child process failed to start, or a measurement failed."""


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the benchmark process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Machine:
    """Which core runs the system under test and which the upstream + load generator."""

    service_cpu: int | None
    load_cpu: int | None

    def pin(self, cpu: int | None) -> list[str]:
        return [] if cpu is None else ["taskset", "-c", str(cpu)]

    @classmethod
    def choose(cls, service: int | None, load: int | None) -> Machine:
        allowed = sorted(os.sched_getaffinity(0))
        if shutil.which("taskset") is None or len(allowed) < 2:
            print("warning: fewer than 2 usable cores or no taskset; nothing is pinned",
                  file=sys.stderr)  # fmt: skip
            return cls(None, None)
        service = allowed[0] if service is None else service
        load = next(c for c in allowed if c != service) if load is None else load
        return cls(service, load)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def http_status(url: str, body: bytes | None = None, timeout: float = 2.0) -> int:
    """Status of a GET (or a JSON POST when ``body`` is given); 0 when nothing answers."""
    headers = {"Content-Type": "application/json"}
    try:
        with _OPENER.open(urllib.request.Request(url, body, headers), timeout=timeout) as resp:
            resp.read()
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return 0


def child_env() -> dict[str, str]:
    """This environment without LLM_* settings and tracing switches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    for name in DROPPED_ENV:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Harness:
    """Starts the fake upstream, the service and the bench modules; stops them all on exit."""

    def __init__(self, machine: Machine, source: Path) -> None:
        self.machine = machine
        self.source = source  # folder with llm_service/ and prompts/
        self.env = child_env()
        if source != ROOT:  # a --ref snapshot: the bench package still comes from the repo
            self.env["PYTHONPATH"] = str(ROOT)
        self.children: list[Child] = []
        self.logs = Path(tempfile.mkdtemp(prefix="llm-bench-logs-"))

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop()
        self.children.clear()
        shutil.rmtree(self.logs, ignore_errors=True)

    def spawn(
        self, name: str, argv: list[str], cpu: int | None, env: dict[str, str] | None = None
    ) -> Child:
        """Start ``argv`` pinned to ``cpu`` (cwd: the source folder), output to a log file."""
        log = self.logs / f"{name}-{len(self.children)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*self.machine.pin(cpu), *argv],
                cwd=self.source,
                env=env or self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def wait_ready(self, child: Child, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                code = child.proc.returncode
                raise BenchError(f"{child.name} exited with {code}:\n{child.log_tail()}")
            if http_status(url, timeout=1.0) == 200:
                return
            time.sleep(0.1)
        raise BenchError(f"{child.name}: no answer from {url} in {timeout:.0f} s\n"
                         f"{child.log_tail()}")  # fmt: skip

    def start_upstream(self, name: str, delay_ms: float, per_write: int) -> tuple[Child, str]:
        """``tests/support/fake_openai.py`` on the load core; returns it and its base URL.
        Always the working tree's, so that a ``--ref`` run differs in the service alone."""
        fake = str(ROOT / "tests" / "support" / "fake_openai.py")
        return self._start_fake(name, [fake, "--delay-ms", str(delay_ms),
                                       "--per-write", str(per_write)])  # fmt: skip

    def start_paced_upstream(self, name: str, delay_ms: float) -> tuple[Child, str]:
        """``bench.paced_upstream`` (one timer for all streams) on the load core."""
        return self._start_fake(name, ["-m", "bench.paced_upstream", "--delay-ms", str(delay_ms)])

    def _start_fake(self, name: str, argv: list[str]) -> tuple[Child, str]:
        port = free_port()
        argv = [sys.executable, *argv, "--host", "127.0.0.1", "--port", str(port),
                "--tokens", str(TOKENS)]  # fmt: skip
        child = self.spawn(name, argv, self.machine.load_cpu)
        url = f"http://127.0.0.1:{port}"
        try:
            self.wait_ready(child, f"{url}/health")
        except BenchError:
            self.stop(child)
            raise
        return child, url

    def start_service(self, upstream_url: str, extra_env: dict[str, str]) -> tuple[Child, str]:
        """The service on the service core, answered once; returns it and its base URL."""
        port = free_port()
        env = {
            **self.env,
            "LLM_MODEL_SERVER_ENDPOINT": upstream_url,
            "LLM_MODEL_SERVER": "openai",
            "LLM_MODEL_NAME": "fake-model",
            "LLM_LOG_LEVEL": "WARNING",
            **extra_env,
        }
        argv = [sys.executable, "-m", "llm_service", "serve", "--host", "127.0.0.1",
                "--port", str(port)]  # fmt: skip
        child = self.spawn("service", argv, self.machine.service_cpu, env)
        url = f"http://127.0.0.1:{port}"
        try:
            self.wait_ready(child, f"{url}/v1/health_check")
            # One answer first, so that lazy imports and first-use caches are not load.
            body = json.dumps({"messages": [{"role": "user", "content": "hi"}],
                               "max_tokens": TOKENS, "stream": False}).encode()  # fmt: skip
            status = http_status(f"{url}/v1/chat/completions", body, timeout=10.0)
            if status != 200:
                raise BenchError(f"service answered {status} to a first request:\n"
                                 f"{child.log_tail()}")  # fmt: skip
        except BenchError:
            self.stop(child)
            raise
        time.sleep(0.3)
        return child, url

    def run_json(
        self, argv: list[str], cpu: int | None, timeout: float, in_source: bool = False
    ) -> dict[str, Any]:
        """Run ``python <argv>`` pinned to ``cpu`` and parse the JSON it prints.

        The working directory is the repo, or with ``in_source`` the source folder (so
        that ``llm_service`` is imported from a ``--ref`` snapshot).
        """
        proc = subprocess.Popen(
            [*self.machine.pin(cpu), sys.executable, *argv],
            cwd=self.source if in_source else ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        if proc.returncode != 0:
            tail = "\n".join(err.decode(errors="replace").splitlines()[-15:])
            raise BenchError(f"{' '.join(argv[:2])} exited with {proc.returncode}:\n{tail}")
        try:
            result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        except (IndexError, ValueError) as exc:
            raise BenchError(f"{' '.join(argv[:2])} printed no JSON: {exc}") from None
        return result


@contextlib.contextmanager
def source_tree(ref: str | None) -> Iterator[Path]:
    """The repo itself, or a snapshot of git ``ref`` (llm_service and prompts)."""
    if ref is None:
        yield ROOT
        return
    folder = Path(tempfile.mkdtemp(prefix="llm-bench-src-"))
    try:
        archive = folder / "src.tar"
        paths = ["llm_service", "prompts"]
        with archive.open("wb") as out:
            proc = subprocess.run(
                ["git", "archive", "--format=tar", ref, *paths],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.PIPE,
                check=False,
            )
        if proc.returncode != 0:
            raise BenchError(f"git archive {ref} failed: {proc.stderr.decode().strip()}")
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        archive.unlink()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
