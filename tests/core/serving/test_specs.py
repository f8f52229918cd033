"""models.toml parsing and the checks on a list of model specs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import ModelLoadError
from core.models.loader import DEFAULT_EMBEDDING_ID, DEFAULT_MODEL_ID
from core.serving.specs import ModelSpec, check_specs, load_config

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "models.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_the_example_file_parses() -> None:
    specs = load_config(EXAMPLE)
    assert [(s.served_id, s.kind, s.path) for s in specs] == [
        (DEFAULT_MODEL_ID, "chat", None), ("smollm2-short", "chat", None),
        (DEFAULT_EMBEDDING_ID, "embedding", None)]
    assert specs[0].default and specs[0].aliases == ("smollm2",)
    assert (specs[1].max_seq_len, specs[1].max_seqs, specs[1].kv_cache_tokens) == (512, 4, 2048)


def test_missing_keys_come_from_the_command_line(tmp_path: Path) -> None:
    base = ModelSpec(dtype="bfloat16", max_seq_len=1024, max_seqs=3, seed=7)
    specs = load_config(write(tmp_path, '[[models]]\nmax_seqs = 5\n'
                                        '[[models]]\nkind = "embedding"\n'), base)
    assert specs[0] == ModelSpec(dtype="bfloat16", max_seq_len=1024, max_seqs=5, seed=7)
    assert specs[1].kind == "embedding" and specs[1].max_seq_len is None  # its own limit


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    specs = load_config(write(tmp_path, '[[models]]\npath = "weights/m.gguf"\n'))
    assert specs[0].path == str(tmp_path / "weights" / "m.gguf")
    assert specs[0].served_id == "m"


@pytest.mark.parametrize(("text", "message"), [
    ("", "no \\[\\[models\\]\\] tables"),
    ("[[models]]\nkind = 'vision'\n", "kind: input should be 'chat' or 'embedding', not 'vision'"),
    ("[[models]]\nmax_seq_len = 8\n", "max_seq_len: input should be greater than or equal to 16"),
    ("[[models]]\nmax_seqs = '4'\n", "max_seqs: input should be a valid integer, not '4'"),
    ("[[models]]\nmax_queue = -1\n", "max_queue: input should be greater than or equal to 0"),
    ("[[models]]\nprefix_caching = 1\n", "prefix_caching: input should be a valid boolean"),
    ("[[models]]\nrequest_timeout = 0\n", "request_timeout: input should be greater than 0"),
    ("[[models]]\naliases = 'x'\n", "aliases: must be a list of names, not 'x'"),
    ("[[models]]\naliases = ['a', '']\n", "aliases: string should have at least 1 character"),
    ("[[models]]\nisq = 'q9'\n", "isq: 'q9' is not a quantization type; choose one of 8, int8"),
    ("[[models]]\ncontext = 5\n", "models\\[0\\]: context is not a known key; known: kind, path"),
    ("model = 1\n", "unknown top-level keys"),
    ("[[models]]\nid = 'x'\n[[models]]\nid = 'y'\naliases = ['x']\n", "'x' is used twice"),
    ("[[models]]\nid = 'default'\n", "'default' is reserved"),
    ("[[models]]\nid='a'\ndefault=true\n[[models]]\nid='b'\ndefault=true\n", "more than one"),
    ("[[models]\n", "cannot read"),
])
def test_bad_files_are_load_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_config(write(tmp_path, text))


def test_two_defaults_of_different_kinds_are_fine() -> None:
    check_specs([ModelSpec(default=True), ModelSpec(kind="embedding", default=True)])


def test_enforce_eager_is_a_boolean_key(tmp_path: Path) -> None:
    specs = load_config(write(tmp_path, "[[models]]\nenforce_eager = true\n"))
    assert specs[0].enforce_eager
    assert not load_config(write(tmp_path, "[[models]]\nid = 'x'\n"))[0].enforce_eager
    with pytest.raises(ModelLoadError, match="enforce_eager: input should be a valid boolean"):
        load_config(write(tmp_path, "[[models]]\nenforce_eager = 'yes'\n"))


def test_a_whole_number_of_seconds_is_a_timeout(tmp_path: Path) -> None:
    specs = load_config(write(tmp_path, "[[models]]\nrequest_timeout = 5\n"))
    assert specs[0].request_timeout == 5.0


def test_the_command_line_and_the_file_share_one_spec() -> None:
    """A value the file refuses, a spec built in code refuses too (the CLI builds one)."""
    with pytest.raises(ValidationError):
        ModelSpec(max_seq_len=8)
    assert ModelSpec(max_seq_len=16).but(max_seqs=2).max_seqs == 2
    with pytest.raises(ValidationError):
        ModelSpec().but(max_seqs=0)
