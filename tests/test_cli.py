"""The `infermcp` command's start-up errors are one line and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg_server import PostgresServer, free_port


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A server that gets as far as opening its response store opens it here."""
    monkeypatch.setenv("INFERMCP_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


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


@pytest.mark.e2e  # a process of its own loads torch and a whole model
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


@pytest.mark.e2e  # a process of its own loads torch and a whole model
def test_non_loopback_host_without_api_key_exits_2() -> None:
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "8123")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("infermcp: error: refusing to serve on non-loopback 0.0.0.0 "
                           "without --api-key")
    assert "--insecure-no-auth" in line


def test_config_with_model_flags_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text("[[models]]\nkind = 'chat'\n")
    r = run_cli("serve", "--config", str(config), "-m", str(tmp_path), "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["infermcp: error: --config lists the models to "
                                             "serve; do not combine it with -m, "
                                             "--served-model-name or --embedding-model"]


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text("[[models]]\nkind = 'vision'\n")
    r = run_cli("serve", "--config", str(config), "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"infermcp: error: {config}: models[0]: kind: input "
                                             "should be 'chat' or 'embedding', not 'vision'"]


def test_missing_embedding_model_path_exits_2(tmp_path: Path) -> None:
    r = run_cli("serve", "--embedding-model", str(tmp_path / "nope"), "--port", "1")
    assert r.returncode == 2
    assert "model path does not exist" in r.stderr and "Traceback" not in r.stderr


def test_nothing_to_serve_exits_2() -> None:
    r = run_cli("serve", "-m", "none", "--embedding-model", "none", "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip() == "infermcp: error: no model to serve"


@pytest.mark.parametrize("flag", ["--drain-delay", "--shutdown-grace"])
def test_a_negative_drain_time_exits_2(flag: str) -> None:
    r = run_cli("serve", flag, "-1", "--port", "8123")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["infermcp: error: --max-body-bytes must be >= 1, "
                                             "--shutdown-grace and --drain-delay >= 0"]


def test_unknown_isq_type_exits_2() -> None:
    r = run_cli("serve", "--isq", "q3_k", "--port", "8123")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("infermcp: error: --isq: 'q3_k' is not a quantization type")
    assert "q4k" in line


def test_isq_in_a_config_file_is_checked(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text("[[models]]\nkind = 'chat'\nisq = 'q9'\n")
    r = run_cli("serve", "--config", str(config), "--port", "1")
    assert r.returncode == 2
    assert "isq: 'q9' is not a quantization type" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(("flags", "line"), [
    (["--max-seq-len", "8"], "--max-seq-len: input should be greater than or equal to 16, not 8"),
    (["--max-seqs", "0"], "--max-seqs: input should be greater than or equal to 1, not 0"),
    (["--max-queue", "-1"], "--max-queue: input should be greater than or equal to 0, not -1"),
    (["--request-timeout", "0"], "--request-timeout: input should be greater than 0, not 0.0"),
    (["--served-model-name", ""],
     "--served-model-name: string should have at least 1 character, not ''"),
])
def test_model_flags_have_the_config_files_limits(flags: list[str], line: str) -> None:
    """The flags build the same ModelSpec a models.toml entry does, with its limits."""
    r = run_cli("serve", *flags, "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"infermcp: error: {line}"]
def test_the_kv_cache_dtype_flag_and_key(tmp_path: Path) -> None:
    """--kv-cache-dtype goes into the model's spec (auto unless given); a config file's
    kv_cache_dtype is checked like the flag's choices."""
    from infermcp import build_parser, model_specs

    for flags, want in [([], "auto"), (["--kv-cache-dtype", "float32"], "float32")]:
        args = build_parser().parse_args(["serve", "--embedding-model", "none", *flags])
        assert [spec.kv_cache_dtype for spec in model_specs(args)] == [want]
    r = run_cli("serve", "--kv-cache-dtype", "int8", "--port", "1")
    assert r.returncode == 2 and "--kv-cache-dtype: invalid choice: 'int8'" in r.stderr
    config = tmp_path / "models.toml"
    config.write_text("[[models]]\nkind = 'chat'\nkv_cache_dtype = 'bfloat16'\n")
    r = run_cli("serve", "--config", str(config), "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"infermcp: error: {config}: models[0]: kv_cache_dtype: input should be 'auto', "
        "'float32' or 'float16', not 'bfloat16'"]


def test_unusable_state_dir_exits_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    r = run_cli("serve", "--state-dir", str(tmp_path / "file"), "--port", "1")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("infermcp: error: cannot open the response store "
                           f"{tmp_path / 'file' / 'responses.sqlite3'}")


def test_state_dir_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    env = {**os.environ, "INFERMCP_STATE_DIR": str(tmp_path / "file")}
    r = subprocess.run([sys.executable, "-m", "infermcp", "mcp"], capture_output=True, text=True,
                       timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "cannot open the response store" in r.stderr


def test_bad_duration_is_a_usage_error() -> None:
    r = run_cli("serve", "--responses-max-age", "soon")
    assert r.returncode == 2 and "not a duration: 'soon'" in r.stderr


def test_retention_flags(tmp_path: Path) -> None:
    from infermcp import build_parser, response_store

    args = build_parser().parse_args(["serve", "--state-dir", str(tmp_path),
                                      "--responses-max-age", "12h",
                                      "--responses-max-count", "5"])
    store = response_store(args)
    assert store.path == str(tmp_path / "responses.sqlite3")
    assert (store.retention.max_age_s, store.retention.max_count) == (12 * 3600, 5)
    store.close()
    args = build_parser().parse_args(["serve", "--state-dir", str(tmp_path),
                                      "--responses-max-age", "0",
                                      "--responses-max-count", "0"])
    store = response_store(args)
    assert (store.retention.max_age_s, store.retention.max_count) == (None, None)
    store.close()


def test_state_url_opens_the_postgresql_store(postgres: PostgresServer) -> None:
    from core.responses.postgres_store import PostgresResponseStore
    from infermcp import build_parser, response_store

    url = postgres.new_database()
    args = build_parser().parse_args(["serve", "--state-url", url, "--responses-max-age", "1h",
                                      "--responses-max-count", "7"])
    store = response_store(args)
    assert isinstance(store, PostgresResponseStore)
    assert (store.retention.max_age_s, store.retention.max_count) == (3600, 7)
    assert store.url == url.replace(f":{postgres.password}@", ":***@")
    store.close()


def test_wrong_password_in_state_url_exits_2_without_showing_it(
        postgres: PostgresServer) -> None:
    url = postgres.url(password="Wrong-Pa55")
    r = run_cli("serve", "--state-url", url, "--port", "1")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"infermcp: error: cannot open the response store "
                           f"postgresql://infermcp:***@127.0.0.1:{postgres.port}/postgres: ")
    assert "password authentication failed" in line and "Wrong-Pa55" not in r.stderr


def test_unreachable_state_url_from_the_environment_exits_2() -> None:
    url = f"postgresql://u:Secret1@127.0.0.1:{free_port()}/db"
    env = {**os.environ, "INFERMCP_STATE_URL": url}
    r = subprocess.run([sys.executable, "-m", "infermcp", "mcp"], capture_output=True, text=True,
                       timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("infermcp: error: cannot open the response store postgresql://u:***@")
    assert "Connection refused" in line and "Secret1" not in r.stderr


def test_state_url_must_be_postgresql() -> None:
    r = run_cli("serve", "--state-url", "mysql://u:p@h/db", "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "infermcp: error: --state-url must be a postgresql:// URL"]


def test_enforce_eager_reaches_the_model_spec() -> None:
    from infermcp import build_parser, model_specs

    eager = model_specs(build_parser().parse_args(["serve", "--enforce-eager"]))
    assert eager[0].kind == "chat" and eager[0].enforce_eager
    assert not model_specs(build_parser().parse_args(["serve"]))[0].enforce_eager


def test_image_flags_make_the_registrys_image_policy() -> None:
    from core.chat.images import ImagePolicy
    from infermcp import build_parser, image_policy

    args = build_parser().parse_args([
        "serve", "--allow-image-urls", "https://images.example.com/*", "--allow-image-urls",
        "https://*.cdn.example", "--max-images", "2", "--max-image-pixels", "100",
        "--max-image-bytes", "1000"])
    assert image_policy(args) == ImagePolicy(
        ("https://images.example.com/*", "https://*.cdn.example"), max_images=2,
        max_pixels=100, max_bytes=1000)
    assert image_policy(build_parser().parse_args(["mcp"])) == ImagePolicy()


@pytest.mark.parametrize(("flags", "line"), [
    (["--max-images", "0"], "--max-images must be >= 1, not 0"),
    (["--max-image-pixels", "-1"], "--max-image-pixels must be >= 1, not -1"),
    (["--allow-image-urls", "images.example.com"],
     "--allow-image-urls: 'images.example.com' is not a URL pattern; write "
     "http(s)://host[:port][/path], e.g. 'https://example.com/*'"),
])
def test_bad_image_flags_are_one_line(flags: list[str], line: str) -> None:
    from core.errors import ModelLoadError
    from infermcp import build_parser, image_policy

    with pytest.raises(ModelLoadError) as info:
        image_policy(build_parser().parse_args(["serve", *flags]))
    assert info.value.message == line


def test_a_bad_image_url_pattern_exits_2() -> None:
    r = run_cli("serve", "--allow-image-urls", "ftp://x/*", "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "infermcp: error: --allow-image-urls: 'ftp://x/*' is not a URL pattern; write "
        "http(s)://host[:port][/path], e.g. 'https://example.com/*'"]


def test_mcp_allow_url_patterns_are_parsed_and_a_bad_one_exits_2() -> None:
    from infermcp import build_parser, mcp_allow_urls

    args = build_parser().parse_args(["serve", "--mcp-allow-url", "https://*.example.com/mcp"])
    (pattern,) = mcp_allow_urls(args)
    assert (pattern.text, pattern.host, pattern.port) == ("https://*.example.com/mcp",
                                                          "*.example.com", 443)
    r = run_cli("serve", "--mcp-allow-url", "mcp.example.com/*", "--port", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "infermcp: error: --mcp-allow-url: 'mcp.example.com/*' is not a URL pattern; write "
        "http(s)://host[:port][/path], e.g. 'https://example.com/*'"]
