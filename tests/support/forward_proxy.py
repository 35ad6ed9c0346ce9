"""A real forward proxy for the tests: proxy.py (PyPI ``proxy.py``) in a child process.

It forwards plain HTTP requests sent to it with an absolute URL and opens CONNECT tunnels,
optionally only for clients that send its Basic credentials (``--basic-auth``), as a
corporate proxy does. A plugin (``proxy_recorder.py``) logs each request and tunnel as the
proxy handles it, which lets a test prove what went through it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

# "proxied POST 127.0.0.1:8000/v1/chat/completions", "proxied CONNECT 127.0.0.1:8443"
_ACCESS = re.compile(r"proxied (?P<method>[A-Z]+) (?P<target>\S+)")
_ROOT = Path(__file__).resolve().parents[2]  # where the child imports the plugin from


class ForwardProxy:
    """proxy.py listening on 127.0.0.1; ``url`` (with ``user:password@`` when ``auth``)."""

    def __init__(self, directory: Path, *, auth: str | None = None) -> None:
        self.log_file = directory / "proxy.log"
        port_file = directory / "proxy.port"
        command = [
            sys.executable, "-m", "proxy",
            "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
            "--num-workers", "1", "--num-acceptors", "1",
            "--log-level", "INFO", "--log-file", str(self.log_file),
            "--plugins", "tests.support.proxy_recorder.RecordRequests",
        ]  # fmt: skip
        if auth is not None:
            command += ["--basic-auth", auth]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), env.get("PYTHONPATH", "")])
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"proxy.py did not start: {self.log()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        _wait_listening(self.port)
        userinfo = f"{auth}@" if auth else ""
        self.url = f"http://{userinfo}127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of each request or tunnel handled so far: ("POST",
        "127.0.0.1:8000/v1/chat/completions"), ("CONNECT", "127.0.0.1:8443")."""
        return [(m["method"], m["target"]) for m in _ACCESS.finditer(self.log())]

    def wait_for(self, method: str, target: str, count: int = 1, timeout: float = 10) -> int:
        """How many handled requests are ``method`` to a target containing ``target``,
        waiting up to ``timeout`` s for ``count`` (the log is written by another process)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = sum(1 for m, t in self.requests() if m == method and target in t)
            if seen >= count or time.monotonic() > deadline:
                return seen
            time.sleep(0.05)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
