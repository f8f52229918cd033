"""Pooling: the config read as sentence-transformers reads it, and the pooled vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from core.embedding.encoder_runner import EncoderRunner, pool
from core.embedding.pooling import PoolingConfig, pooling_modes
from core.errors import ModelLoadError

TRANSFORMER = {"idx": 0, "name": "0", "path": "",
               "type": "sentence_transformers.models.Transformer"}
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.models.Normalize"}


def write_st_dir(path: Path, pooling: dict[str, Any], normalize: bool,
                 max_seq_length: int | None = None) -> Path:
    modules = [TRANSFORMER, {"idx": 1, "name": "1", "path": "1_Pooling",
                             "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append(NORMALIZE)
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if max_seq_length:
        (path / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    return path


def test_legacy_boolean_keys() -> None:
    config = {"word_embedding_dimension": 8, "pooling_mode_cls_token": False,
              "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}
    assert pooling_modes(config) == ("max", "mean")  # sentence-transformers' order


def test_new_pooling_mode_key_and_default() -> None:
    assert pooling_modes({"pooling_mode": "cls"}) == ("cls",)
    assert pooling_modes({"pooling_mode": ["lasttoken", "mean"]}) == ("lasttoken", "mean")
    assert pooling_modes({"word_embedding_dimension": 8}) == ("mean",)
    with pytest.raises(ModelLoadError, match="unknown pooling mode"):
        pooling_modes({"pooling_mode": "median"})


def test_reads_modules_pooling_normalize_and_length(tmp_path: Path) -> None:
    write_st_dir(tmp_path, {"pooling_mode_cls_token": True}, normalize=True, max_seq_length=128)
    assert PoolingConfig.from_model_dir(tmp_path) == PoolingConfig(("cls",), True, 128, "")


def test_plain_hf_directory_mean_pools_without_normalizing(tmp_path: Path) -> None:
    assert PoolingConfig.from_model_dir(tmp_path) == PoolingConfig(("mean",), False, None, "")


def test_unsupported_module_is_a_load_error(tmp_path: Path) -> None:
    modules = [TRANSFORMER, {"idx": 1, "name": "1", "path": "1_Dense",
                             "type": "sentence_transformers.models.Dense"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="'Dense' is not supported"):
        PoolingConfig.from_model_dir(tmp_path)


# Two rows: 3 real tokens + 1 pad, and 4 real tokens.
HIDDEN = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize(("mode", "row0"), [
    ("cls", [0.0, 1.0]),
    ("max", [4.0, 5.0]),
    ("mean", [2.0, 3.0]),
    ("mean_sqrt_len_tokens", [6.0 / 3 ** 0.5, 9.0 / 3 ** 0.5]),
    ("weightedmean", [(0 * 1 + 2 * 2 + 4 * 3) / 6, (1 * 1 + 3 * 2 + 5 * 3) / 6]),
    ("lasttoken", [4.0, 5.0]),
])
def test_each_mode_ignores_padding(mode: str, row0: list[float]) -> None:
    out = pool(HIDDEN, MASK, (mode,))
    assert out.shape == (2, 2)
    assert torch.allclose(out[0], torch.tensor(row0))
    alone = pool(HIDDEN[:1, :3], MASK[:1, :3], (mode,))  # the same row without its pad
    assert torch.allclose(out[0], alone[0])


def test_modes_concatenate() -> None:
    out = pool(HIDDEN, MASK, ("cls", "mean"))
    assert out.shape == (2, 4)
    assert torch.equal(out[:, :2], pool(HIDDEN, MASK, ("cls",)))


@pytest.mark.parametrize(("pooling", "normalize"), [
    ({"pooling_mode_cls_token": True}, False),
    ({"pooling_mode": ["max", "mean"]}, True),
    ({"pooling_mode": "weightedmean"}, True),
    ({"pooling_mode": "lasttoken"}, False),
])
def test_runner_equals_sentence_transformers(tmp_path: Path, pooling: dict[str, Any],
                                             normalize: bool) -> None:
    """A tiny random BERT saved as a sentence-transformers directory: our vectors equal the
    library's for the same padded batch."""
    st = pytest.importorskip("sentence_transformers")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config).eval().save_pretrained(tmp_path)
    write_st_dir(tmp_path, {"word_embedding_dimension": 16, **pooling}, normalize)
    runner = EncoderRunner(tmp_path, PoolingConfig.from_model_dir(tmp_path), "float32")
    batch = [[2, 5, 9, 3], [2, 7, 3], [2, 11, 12, 13, 14, 3]]
    ours = runner.encode(batch)

    modules = st.SentenceTransformer(str(tmp_path), device="cpu")._modules
    model = modules["0"].auto_model
    width = max(map(len, batch))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in batch])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
    with torch.no_grad():
        features = {"input_ids": ids, "attention_mask": mask,
                    "token_embeddings": model(input_ids=ids, attention_mask=mask)[0]}
        for name in list(modules)[1:]:
            features = modules[name](features)
    reference = features["sentence_embedding"].numpy()
    assert ours.shape == reference.shape == (3, 16 * (2 if "max" in str(pooling) else 1))
    assert np.abs(ours - reference).max() < 1e-5
