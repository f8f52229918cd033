"""The `infermcp` command's start-up errors are one line and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "INFERMCP_API_KEY"}
    return subprocess.run([sys.executable, "-m", "infermcp", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_missing_model_path_exits_2(tmp_path: Path) -> None:
    r = run_cli("serve", "-m", str(tmp_path / "nope"), "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"infermcp: error: model path does not exist: "
                                             f"{tmp_path / 'nope'}"]


def test_directory_without_config_exits_2(tmp_path: Path) -> None:
    r = run_cli("serve", "-m", str(tmp_path), "--port", "1")
    assert r.returncode == 2
    assert "no config.json" in r.stderr and "Traceback" not in r.stderr


def test_broken_checkpoint_exits_2(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    r = run_cli("serve", "-m", str(tmp_path), "--port", "0")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("infermcp: error:")


def test_mcp_port_equal_to_port_exits_2() -> None:
    r = run_cli("serve", "--port", "8123", "--mcp-port", "8123")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "infermcp: error: --mcp-port must differ from --port (8123)"]


def test_non_loopback_host_without_api_key_exits_2() -> None:
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "8123")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("infermcp: error: refusing to serve on non-loopback 0.0.0.0 "
                           "without --api-key")
    assert "--insecure-no-auth" in line
