"""The tiny GGUF writer, checked against gguf-py's reader and transformers' GGUF loader."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from core.models.loader import default_gguf
from tests.core.models import gguf_files
from tests.core.models.gguf_files import (
    K_QUANTS,
    WRITABLE,
    corrupt_copies,
    dequantized_tensors,
    quantize,
    round_trip,
    tiny_llama,
    tiny_qwen2,
    unpermute_rows,
    write_tiny_gguf,
)

SMALL_VOCAB = 256  # files without a tokenizer take any vocabulary
TOKEN_IDS = torch.tensor([[1, 50, 200, 9, 42, 255]])
# relative error of dequantize(quantize(x)) on Gaussian rows, with headroom
PRECISION = {QType.F32: 1e-7, QType.F16: 1e-3, QType.BF16: 5e-3, QType.Q8_0: 0.01,
             QType.Q6_K: 0.03, QType.Q5_0: 0.06, QType.Q5_1: 0.06, QType.Q5_K: 0.06,
             QType.Q4_0: 0.12, QType.Q4_1: 0.12, QType.Q4_K: 0.12}


def _name(value: object) -> str:
    return getattr(value, "name", str(value))


@pytest.fixture(scope="module")
def small_llama() -> PreTrainedModel:
    return tiny_llama(hidden=64, intermediate=128, vocab=SMALL_VOCAB, tie=False)


@pytest.fixture(scope="module")
def k_llama() -> PreTrainedModel:
    return tiny_llama(vocab=SMALL_VOCAB)  # hidden 256, intermediate 512, tied


@pytest.fixture(scope="module")
def small_qwen2() -> PreTrainedModel:
    return tiny_qwen2(hidden=64, intermediate=128, vocab=SMALL_VOCAB)


@pytest.mark.parametrize("qtype", WRITABLE, ids=lambda t: t.name)
def test_quantize_round_trips_through_gguf_py_within_the_types_precision(qtype: QType) -> None:
    x = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)
    x[0, :40] = 0.0  # an all-zero block must not divide by zero
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    data = quantize(x, qtype)
    assert data.nbytes == x.size // block * type_size
    back = gguf.quants.dequantize(data, qtype).reshape(x.shape)
    assert np.linalg.norm(back - x) / np.linalg.norm(x) < PRECISION[qtype]
    assert not back[0, :32].any()


@pytest.mark.parametrize(("model", "qtype", "embedding_type"), [
    *[("small_llama", qtype, None) for qtype in WRITABLE if qtype not in K_QUANTS],
    ("small_llama", QType.Q4_1, QType.F16),
    *[("k_llama", qtype, QType.Q8_0) for qtype in K_QUANTS],
    ("small_qwen2", QType.Q4_0, None)], ids=_name)
def test_the_file_holds_the_round_trip_weights(model: str, qtype: QType,
                                               embedding_type: QType | None,
                                               request: pytest.FixtureRequest,
                                               tmp_path: Path) -> None:
    hf_model = request.getfixturevalue(model)
    path = write_tiny_gguf(tmp_path / "m.gguf", hf_model, qtype, embedding_type=embedding_type,
                           with_tokenizer=False)
    tensors = dequantized_tensors(path)
    expected = round_trip(hf_model, qtype, embedding_type).state_dict()
    config = hf_model.config
    names = gguf.get_tensor_name_map(gguf_files.ARCHES[config.model_type],
                                     config.num_hidden_layers)
    assert ("output.weight" in tensors) == (not config.tie_word_embeddings)
    assert len(tensors) == len(expected) - config.tie_word_embeddings
    for hf_name, want in expected.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name not in tensors:
            continue  # the tied lm_head
        stored_type, got = tensors[name]
        assert stored_type == _expected_type(name, want.ndim, qtype, embedding_type), name
        if config.model_type == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            got = unpermute_rows(got, want.shape[0] // config.head_dim)
        np.testing.assert_array_equal(got, want.numpy(), err_msg=name)


def _expected_type(name: str, ndim: int, qtype: QType, embedding_type: QType | None) -> QType:
    if ndim == 1:
        return QType.F32
    return (embedding_type or qtype) if name == "token_embd.weight" else qtype


@pytest.mark.parametrize(("model", "qtype", "tolerance"), [
    ("k_llama", QType.Q4_K, 1.0), ("small_qwen2", QType.Q8_0, 0.05)], ids=_name)
def test_transformers_loads_the_round_trip_model(model: str, qtype: QType, tolerance: float,
                                                 request: pytest.FixtureRequest,
                                                 tmp_path: Path) -> None:
    hf_model = request.getfixturevalue(model)
    write_tiny_gguf(tmp_path / "m.gguf", hf_model, qtype, with_tokenizer=False)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                  dtype=torch.float32)
    with torch.no_grad():
        got = loaded(TOKEN_IDS).logits
        want = round_trip(hf_model, qtype)(TOKEN_IDS).logits
        full = hf_model(TOKEN_IDS).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # random weights amplify quantization error: 4 bits move the logits a lot, 8 bits little
    assert 0 < ((got - full).norm() / full.norm()).item() < tolerance


@pytest.mark.e2e  # a process of its own loads torch and a whole model
def test_a_file_with_the_bundled_tokenizer_encodes_like_the_bundled_model(tmp_path: Path) -> None:
    model = tiny_llama(hidden=64, intermediate=128)  # the bundled vocabulary
    write_tiny_gguf(tmp_path / "m.gguf", model, QType.Q8_0)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    bundled = dict((key, value) for key, value, *_ in
                   gguf_files.tokenizer_fields(default_gguf().resolve()))
    ids = tokenizer("Hello").input_ids
    assert [bundled["tokenizer.ggml.tokens"][i] for i in ids] == ["Hello"]
    assert tokenizer.eos_token_id == bundled["tokenizer.ggml.eos_token_id"]
    assert tokenizer.chat_template == bundled["tokenizer.chat_template"]


def test_a_vocabulary_that_is_not_the_tokenizers_is_refused(small_llama: PreTrainedModel,
                                                            tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size is 256"):
        write_tiny_gguf(tmp_path / "m.gguf", small_llama, QType.Q8_0)


def test_rows_that_are_not_whole_blocks_are_refused(small_llama: PreTrainedModel,
                                                    tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not whole Q4_K blocks"):
        write_tiny_gguf(tmp_path / "m.gguf", small_llama, QType.Q4_K, with_tokenizer=False)


def test_each_corrupt_copy_fails_in_gguf_py(small_llama: PreTrainedModel, tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", small_llama, QType.Q4_0, with_tokenizer=False)
    copies = corrupt_copies(path, tmp_path / "bad")
    assert copies["truncated"].stat().st_size < path.stat().st_size
    errors = {"truncated": "cannot reshape", "bad_magic": "magic",
              "unknown_type": "not a valid GGMLQuantizationType"}
    for kind, message in errors.items():
        with pytest.raises(ValueError, match=message):
            gguf.GGUFReader(copies[kind])
