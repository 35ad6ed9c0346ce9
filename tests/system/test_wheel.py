"""The built distributions: the wheel holds llm_service (its prompts included) and nothing else,
the sdist only what builds it, and the wheel installed in a fresh venv works outside the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]

QUESTION = "What is DL?"
DOCUMENT = "Deep learning is ..."

# Runs in the installed venv with -I (isolated: neither the working directory, nor the script's
# folder, nor PYTHON* variables reach sys.path), so only the installed wheel can be imported.
SCRIPT = f"""
import importlib.resources
import json
import sysconfig

import llm_service
from llm_service import build_chain, build_prompt

messages = build_prompt(
    {{
        "question": {QUESTION!r},
        "reranked_docs": [
            {{"text": {DOCUMENT!r}, "metadata": {{"url": "https://x/1", "citation_id": 1}}}}
        ],
    }}
)
manifest = importlib.resources.files("llm_service").joinpath("prompts/manifest.toml")
print(json.dumps({{
    "package": llm_service.__file__,
    "purelib": sysconfig.get_paths()["purelib"],
    "manifest": str(manifest),
    "manifest_is_file": manifest.is_file(),
    "build_chain": callable(build_chain),
    "messages": [[type(m).__name__, m.content] for m in messages],
}}))
"""


def uv() -> list[str]:
    """uv as `uv run` (and so `make test`) invoked it, else the one on PATH, else python3 -m uv."""
    if exe := os.environ.get("UV"):
        return [exe]
    if exe := shutil.which("uv"):
        return [exe]
    return ["python3", "-m", "uv"]


def clean_env() -> dict[str, str]:
    """This process's environment without what would point a child at the project's venv."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LLM_")}


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def build(kind: str, out_dir: Path, source: Path = ROOT) -> Path:
    """Build one distribution (``--wheel`` or ``--sdist``) of ``source`` into ``out_dir``."""
    run([*uv(), "build", kind, "--out-dir", str(out_dir), str(source)], cwd=ROOT)
    pattern = "*.whl" if kind == "--wheel" else "*.tar.gz"
    (built,) = out_dir.glob(pattern)
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("--wheel", tmp_path_factory.mktemp("wheel"))


def repo_prompts() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "prompts").rglob("*") if p.is_file()}


def test_wheel_holds_llm_service_and_its_prompts_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"llm_service"}, sorted(top)
    assert len(dist_info) == 1
    assert not any(name.startswith(("tests/", "bench/", "prompts/")) for name in names)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    assert "llm_service/prompts/manifest.toml" in names
    prefix = "llm_service/"
    prompts = {n.removeprefix(prefix) for n in names if n.startswith(f"{prefix}prompts/")}
    assert prompts == repo_prompts()
    assert "llm_service/py.typed" in names
    assert any(n.endswith("/static/playground.html") for n in names if n.startswith("llm_service/"))


def test_sdist_holds_what_builds_the_wheel(wheel: Path, tmp_path: Path) -> None:
    sdist = build("--sdist", tmp_path / "sdist")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    root, *_ = members[0].split("/", 1)
    top = {m.removeprefix(f"{root}/").split("/", 1)[0] for m in members if m != root}
    allowed = {"llm_service", "prompts", "README.md", "pyproject.toml", "PKG-INFO", ".gitignore"}
    assert top <= allowed, sorted(top - allowed)
    assert {"llm_service", "prompts", "pyproject.toml"} <= top
    # A wheel built from the sdist alone has what the one built from the checkout has.
    rebuilt = build("--wheel", tmp_path / "rebuilt", source=sdist)
    assert set(zipfile.ZipFile(rebuilt).namelist()) == set(zipfile.ZipFile(wheel).namelist())


def test_installed_wheel_works_outside_the_repo(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([*uv(), "venv", str(venv), "--python", sys.executable], cwd=tmp_path)
    python = venv / "bin" / "python"
    # The runtime dependencies at the versions the project is tested with (uv.lock), which uv's
    # cache mostly holds already; the wheel's own requirements still decide what is installed.
    constraints = tmp_path / "constraints.txt"
    run(
        [*uv(), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes",
         "--format", "requirements-txt", "--output-file", str(constraints)],
        cwd=ROOT,
    )  # fmt: skip
    run(
        [*uv(), "pip", "install", "--python", str(python), "-c", str(constraints), str(wheel)],
        cwd=tmp_path,
    )

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = outside / "use_package.py"
    script.write_text(SCRIPT)
    report: dict[str, Any] = json.loads(run([str(python), "-I", str(script)], cwd=outside).stdout)

    purelib = Path(report["purelib"]).resolve()
    assert Path(report["package"]).resolve().is_relative_to(purelib)
    assert report["manifest_is_file"]
    assert Path(report["manifest"]).resolve().is_relative_to(purelib)
    assert report["build_chain"]
    messages: list[list[str]] = report["messages"]
    assert [kind for kind, _ in messages] == ["SystemMessage", "HumanMessage"]
    text = "\n".join(content for _, content in messages)
    assert QUESTION in text and DOCUMENT in text

    cli = run([str(venv / "bin" / "llm-service"), "--help"], cwd=outside, timeout=60)
    assert "usage: llm-service" in cli.stdout
