"""The import layers of pyproject.toml's contract: kept by the code, broken by an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def copy_of_the_tree(tmp_path: Path) -> Path:
    for package in ("core", "http_api", "mcp_server", "mcp_client"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_code_keeps_the_layers() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "upward", "chain"), [
    ("core/models/loader.py", "from core.responses import store", "core.models.loader -> "
     "core.responses.store"),
    ("core/engine/scheduler.py", "from core.chat import tools", "core.engine.scheduler -> "
     "core.chat.tools"),
    ("http_api/app.py", "import mcp_server", "http_api.app -> mcp_server"),
    ("mcp_client/config.py", "import http_api", "mcp_client.config -> http_api"),
])
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, upward: str,
                                              chain: str) -> None:
    root = copy_of_the_tree(tmp_path)
    with (root / module).open("a") as source:
        source.write(f"\n{upward}  # noqa\n")
    result = lint(root)
    assert result.returncode == 1
    assert "0 kept, 1 broken" in result.stdout and chain in result.stdout


@pytest.mark.parametrize("module", ["core", "core.errors", "core.serving.specs",
                                    "core.models.formats", "infermcp"])
def test_light_modules_import_neither_torch_nor_llguidance(module: str) -> None:
    """The command line answers --help and bad flags without loading the engine's weight
    (nor psycopg, which only a --state-url loads)."""
    code = (f"import sys, {module}; heavy = {{'torch', 'llguidance', 'transformers', "
            "'psycopg'}; "
            "print(sorted(heavy & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
