"""The tokenizer and chat template of a served model (a Hugging Face tokenizer underneath)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import InvalidRequestError, ModelLoadError

# names the tokenizer's class in a directory this project wrote (see Tokenizer.load)
CLASS_FILE = "infermcp_tokenizer.json"
# The class transformers registers (TOKENIZER_MAPPING_NAMES) for a model type a GGUF file here
# can have, where loading through it changes what the written files say: Qwen2's normalizes text
# to NFC, as the reference tokenizer does. Any other type's files load through the plain backend:
# Gemma's class would rebuild the pipeline the files hold (gguf_tokenizer writes a SentencePiece
# vocabulary's as transformers' conversion does, through that class; a byte-level one it would
# split wrongly) after importing its module and parsing the files in Python, 0.6 s of a start of
# Gemma 3's 262,144 tokens. A test holds this to transformers' table but for Gemma's, and Gemma's
# class to the backend. Looking a type up there imports its configuration machinery and torch,
# seconds of a process that builds a GGUF's tokenizer and nothing else (loader.build_ahead).
GGUF_TOKENIZER_CLASSES = {"qwen2": "Qwen2Tokenizer", "qwen3": "Qwen2Tokenizer",
                          "qwen3_moe": "Qwen2Tokenizer"}


def _class_named(name: str) -> Any:
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    return tokenizer_class_from_name(name)


class Tokenizer:
    """Encode, decode and render chat messages through the model's own chat template."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self._tok = hf_tokenizer
        self._affixes: tuple[list[int], list[int]] | None = None

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """The tokenizer in ``path``: by the class :data:`CLASS_FILE` names where one does (a
        GGUF's metadata directory: AutoTokenizer would first import transformers' model
        configuration machinery, 1.4 s, to find the class), else by AutoTokenizer. The plain
        tokenizers backend is imported straight from its module: finding any class by name
        imports ``transformers.models``, which indexes every model family (0.5-1 s)."""
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        try:
            if (path / CLASS_FILE).is_file():
                name = json.loads((path / CLASS_FILE).read_text())["tokenizer_class"]
                tokenizer_class = TokenizersBackend if name == TokenizersBackend.__name__ \
                    else _class_named(name)
                if tokenizer_class is None:
                    raise ValueError(f"transformers has no tokenizer class {name}")
                return cls(tokenizer_class.from_pretrained(str(path)))
            from transformers import AutoTokenizer

            return cls(AutoTokenizer.from_pretrained(str(path)))
        except Exception as exc:  # transformers raises many kinds here
            raise ModelLoadError(f"cannot load the tokenizer in {path}: {exc}") from exc

    @staticmethod
    def import_backend() -> None:
        """Import transformers' tokenizers backend, :meth:`load`'s first 0.7 s (a thread that
        waits for a tokenizer's build can do it while it waits)."""
        import transformers.tokenization_utils_tokenizers  # noqa: F401

    @staticmethod
    def record_class(path: Path, model_type: str) -> None:
        """Name in ``path`` the class to load the tokenizer a GGUF file's metadata wrote there,
        of a model of ``model_type``: :data:`GGUF_TOKENIZER_CLASSES`' or the plain backend."""
        name = GGUF_TOKENIZER_CLASSES.get(model_type, "TokenizersBackend")
        (path / CLASS_FILE).write_text(json.dumps({"tokenizer_class": name}))

    @property
    def hf_tokenizer(self) -> Any:
        """The underlying Hugging Face tokenizer (for libraries that take one)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def supports_tools(self) -> bool:
        """Whether the chat template renders a ``tools`` list itself."""
        return "tools" in str(self._tok.chat_template or "")

    @property
    def chat_template(self) -> str:
        """The chat template's source ("" without one)."""
        return str(self._tok.chat_template or "")

    @property
    def has_chat_template(self) -> bool:
        return bool(self._tok.chat_template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (see :meth:`with_special_tokens`)."""
        if not texts:
            return []
        return [list(ids) for ids in self._tok(texts, add_special_tokens=False)["input_ids"]]

    def with_special_tokens(self, token_ids: list[int]) -> list[int]:
        """``token_ids`` wrapped as the model expects one input (``[CLS] ... [SEP]`` for BERT)."""
        prefix, suffix = self._special_affixes()
        return [*prefix, *token_ids, *suffix]

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """The special tokens encoding puts before and after one text (found with a probe,
        since transformers 5 tokenizers no longer expose the template directly)."""
        if self._affixes is None:
            inner = self.encode("a", add_special_tokens=False)
            full = self.encode("a", add_special_tokens=True)
            self._affixes = ([], [])
            for i in range(len(full) - len(inner) + 1):
                if full[i:i + len(inner)] == inner:
                    self._affixes = (full[:i], full[i + len(inner):])
                    break
        return self._affixes

    @property
    def num_special_tokens(self) -> int:
        """How many tokens :meth:`with_special_tokens` adds to one input."""
        return len(self.with_special_tokens([]))

    @property
    def pad_token_id(self) -> int | None:
        pad = self._tok.pad_token_id
        return None if pad is None else int(pad)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens))

    def token_text(self, token_id: int) -> str:
        """The text of one token as it reads in a stream (special tokens included)."""
        return self.decode([token_id], skip_special_tokens=False)

    def render_chat(self, messages: list[dict[str, Any]], *,
                    tools: list[dict[str, Any]] | None = None,
                    enable_thinking: bool | None = None,
                    add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` under the model's chat template."""
        if not self.has_chat_template:
            raise InvalidRequestError("this model has no chat template; use /v1/completions")
        kwargs: dict[str, Any] = {}
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        try:
            return str(self._tok.apply_chat_template(
                messages, tools=tools, add_generation_prompt=add_generation_prompt,
                tokenize=False, **kwargs))
        except Exception as exc:  # jinja2 errors from the template itself
            raise InvalidRequestError(f"the chat template rejected the messages: {exc}",
                                      param="messages") from exc

    def encode_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        """Token ids of the rendered chat prompt (the template already holds special tokens)."""
        return self.encode(self.render_chat(messages, **kwargs), add_special_tokens=False)
