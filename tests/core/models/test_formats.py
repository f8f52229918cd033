"""Weight-format names: every alias users give resolves to one format."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequestError
from core.models import formats


@pytest.mark.parametrize(("name", "kind"), [
    ("8", "int8"), ("Q8_0", "int8"), ("q8k", "int8"), ("INT8", "int8"),
    ("5", "int5"), ("Q5_K", "int5"), ("q5_1", "int5"), ("q5k", "int5"),
    ("4", "int4"), ("q4_0", "int4"), ("Q4K", "int4"), ("int4", "int4"),
    ("f16", "f16"), ("FP16", "f16"), ("half", "f16"),
    ("bf16", "bf16"), ("f32", "none"), ("none", "none"),
])
def test_type_names_and_bit_widths_resolve(name: str, kind: str) -> None:
    assert formats.resolve(name) == kind


def test_an_unknown_type_is_a_400_listing_the_accepted_ones() -> None:
    with pytest.raises(InvalidRequestError, match="q4k") as info:
        formats.resolve("q3_k")
    assert info.value.param == "ggml_type"
