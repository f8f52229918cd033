"""The embeddings wire model: input forms, and the base64 encoding the openai client decodes."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from http_api.embeddings import encode_vector
from http_api.protocol import EmbeddingCreateRequest


@pytest.mark.parametrize(("given", "inputs"), [
    ("hi", ["hi"]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),
    ([[1, 2], [3]], [[1, 2], [3]]),
    ([], []),
])
def test_input_forms(given: Any, inputs: list[Any]) -> None:
    assert EmbeddingCreateRequest(input=given).inputs() == inputs


@pytest.mark.parametrize("given", [5, [1.5], ["a", [1]], [True], None])
def test_bad_input_types(given: Any) -> None:
    with pytest.raises(ValidationError):
        EmbeddingCreateRequest(input=given)


def test_base64_is_little_endian_float32_and_floats_are_exact() -> None:
    vector = np.array([0.1, -2.5, 3e-8], dtype=np.float32)
    raw = base64.b64decode(encode_vector(vector, "base64"))
    assert raw == vector.astype("<f4").tobytes()
    assert np.frombuffer(raw, dtype="<f4").tolist() == encode_vector(vector, "float")
