"""Each model family served by the real server from a tiny random Hugging Face checkpoint
(written here by transformers, with the bundled tokenizer): the first token's log-probability
equals transformers', 32 greedy tokens equal transformers' ``generate``, and the same tokens come
when 8 requests run together and when the prompt is read from the prefix cache."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from transformers import PreTrainedModel

from core.models.loader import default_gguf, gguf_metadata
from core.models.tokenizer import Tokenizer
from tests.core.models.gguf_files import VOCAB_SIZE
from tests.core.models.test_families import build
from tests.e2e.conftest import Server, launch

# each tiny checkpoint (see tests.core.models.test_families) and its model type
FAMILIES = {"llama3": "llama", "qwen3": "qwen3", "qwen3_moe": "qwen3_moe",
            "mistral-window": "mistral", "gemma2": "gemma2", "gemma3_text": "gemma3_text",
            "phi3": "phi3", "granite": "granite", "olmo2": "olmo2"}
# 20 tokens: past the sliding windows of the tiny models (6)
PROMPT = [504, 3458, 282, 4649, 314, 1638, 30, 198, 1206, 314, 253, 1789, 282, 260, 2517, 28,
          4649, 314, 1638, 30]
NUM_TOKENS = 32
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "infermcp_tokenizer.json")
# chat templates in the shape of each family's own, rendering tools and naming the call format
TEMPLATES = {
    "qwen3": (
        "{%- if tools %}<|im_start|>system\n<tools>{{ tools | tojson }}</tools>\nAnswer with "
        "<tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{%- endif %}"
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"),
    "llama3": (
        "{%- if tools %}<|start_header_id|>system<|end_header_id|>\n\nRespond with "
        "{\"name\": function name, \"parameters\": dictionary}, after <|python_tag|>. "
        "{{ tools | tojson }}<|eot_id|>{%- endif %}{%- for m in messages %}"
        "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>"
        "{%- endfor %}{%- if add_generation_prompt %}<|start_header_id|>assistant"
        "<|end_header_id|>\n\n{%- endif %}"),
    "mistral-window": (
        "{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif %}"
        "{%- for m in messages %}{%- if m.role == 'user' %}[INST]{{ m.content }}[/INST]"
        "{%- elif m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls | tojson }}</s>{%- else %}"
        "{{ m.content }}</s>{%- endif %}{%- endfor %}"),
    "phi3": (
        "{%- for m in messages %}{%- if m.role == 'system' and m.tools %}<|system|>"
        "{{ m.content }}<|tool|>{{ m.tools }}<|/tool|><|end|>{%- else %}<|{{ m.role }}|>"
        "{{ m.content }}<|end|>{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}<|assistant|>{%- endif %}"),
}
# how a forced call opens in the format each of those templates names
CALL_STARTS = {"qwen3": '<tool_call>{"name":"get_weather","arguments":{"city":"',
               "llama3": '{"name":"get_weather","parameters":{"city":"',
               "mistral-window": '[TOOL_CALLS][{"name":"get_weather","arguments":{"city":"',
               "phi3": 'functools[{"name":"get_weather","arguments":{"city":"'}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def models(folder: Path) -> dict[str, PreTrainedModel]:
    """Each family's tiny checkpoint, written into ``folder`` beside the bundled model's
    tokenizer."""
    tokenizer_dir = gguf_metadata(default_gguf())
    written = {}
    for name in FAMILIES:
        model = build(name, VOCAB_SIZE)
        model.save_pretrained(folder / name)
        for file in TOKENIZER_FILES:
            if (tokenizer_dir / file).is_file():
                shutil.copy(tokenizer_dir / file, folder / name / file)
        if name in TEMPLATES:
            (folder / name / "chat_template.jinja").write_text(TEMPLATES[name])
        written[name] = model
    return written


@pytest.fixture(scope="module")
def family_server(models: dict[str, PreTrainedModel], folder: Path) -> Iterator[Server]:
    entries = [f'[[models]]\nid = "{name}"\npath = "{folder / name}"\nisq = "none"\n'
               f'max_seq_len = 512\nmax_seqs = 8\n' for name in models]
    config = folder / "models.toml"
    config.write_text("\n".join(entries))
    with launch(["--config", str(config)],
                folder / "server.log") as server:
        yield server


def client_of(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0,
                         timeout=120)


def greedy_tokens(server: Server, name: str, prompt: list[int] = PROMPT
                  ) -> tuple[list[str], int]:
    """32 greedy tokens' texts and how many prompt tokens came from the prefix cache."""
    out = client_of(server).completions.create(
        model=name, prompt=prompt, max_tokens=NUM_TOKENS, temperature=0, logprobs=1,
        extra_body={"ignore_eos": True})
    logprobs, usage = out.choices[0].logprobs, out.usage
    assert logprobs is not None and logprobs.tokens is not None and usage is not None
    details = usage.prompt_tokens_details
    return logprobs.tokens, details.cached_tokens or 0 if details is not None else 0


def test_the_cards_name_each_architecture(family_server: Server) -> None:
    cards = httpx.get(f"{family_server.base_url}/v1/models").json()["data"]
    assert {c["id"]: c["architecture"] for c in cards} == FAMILIES


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_serves_what_transformers_computes(family_server: Server,
                                                    models: dict[str, PreTrainedModel],
                                                    name: str) -> None:
    check_served_like_transformers(family_server, name, models[name],
                                   Tokenizer.load(gguf_metadata(default_gguf())))


def check_served_like_transformers(server: Server, name: str, model: PreTrainedModel,
                                   tokenizer: Tokenizer, prompt: list[int] = PROMPT) -> None:
    """The first token's logprob equals transformers' to 1e-3; 32 greedy tokens equal its
    ``generate``, 8 requests at once and again from the prefix cache."""
    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1)
        generated = model.generate(torch.tensor([prompt]), max_new_tokens=NUM_TOKENS,
                                   min_new_tokens=NUM_TOKENS, do_sample=False)[0, len(prompt):]
    expected = [tokenizer.token_text(int(t)) for t in generated]
    one = client_of(server).completions.create(
        model=name, prompt=prompt, max_tokens=1, temperature=0, logprobs=1)
    assert one.choices[0].logprobs is not None and one.choices[0].logprobs.token_logprobs
    token_id = int(first.argmax())
    assert one.choices[0].logprobs.token_logprobs[0] == pytest.approx(float(first[token_id]),
                                                                      abs=1e-3)
    with ThreadPoolExecutor(8) as pool:  # 8 at once: batched decode steps
        batched = list(pool.map(lambda _: greedy_tokens(server, name, prompt), range(8)))
    for tokens, _ in batched:
        assert tokens == expected
    tokens, cached = greedy_tokens(server, name, prompt)  # the prompt's blocks are cached now
    assert cached >= 16 and tokens == expected


@pytest.mark.parametrize("name", list(CALL_STARTS))
def test_a_forced_call_is_written_and_parsed_in_the_familys_format(family_server: Server,
                                                                   name: str) -> None:
    """tool_choice required: the grammar makes the model write one call in its format (the
    chat template names it), the parser reads it back; streamed, the same call."""
    client = client_of(family_server)
    request: dict[str, Any] = dict(
        model=name, messages=[{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, max_tokens=40,
        temperature=0)
    choice = client.chat.completions.create(**request, logprobs=True).choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    written = "".join(t.token for t in choice.logprobs.content)
    assert written.startswith(CALL_STARTS[name])
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    streamed = {"name": "", "arguments": ""}
    for chunk in client.chat.completions.create(**request, stream=True):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.function is not None:
                streamed["name"] += delta.function.name or ""
                streamed["arguments"] += delta.function.arguments or ""
    assert streamed == {"name": "get_weather", "arguments": call.function.arguments}


def test_qwen3_thinking_becomes_reasoning_content(family_server: Server) -> None:
    """A ``<think>`` block the model writes (forced here by a grammar: random weights do not
    think) comes back as ``reasoning_content``, whole and streamed."""
    client = client_of(family_server)
    grammar = {"type": "lark",
               "value": 'start: "<think>" /[a-z]{3,8}/ "</think>" /[a-z]{3,8}/'}
    for stream in (False, True):
        out = client.chat.completions.create(
            model="qwen3", messages=[{"role": "user", "content": "Think."}], max_tokens=40,
            temperature=0, stream=stream,
            extra_body={"enable_thinking": True, "grammar": grammar})
        if stream:
            deltas = [c.choices[0].delta for c in out if c.choices]  # type: ignore[union-attr]
            reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
            content = "".join(d.content or "" for d in deltas)
        else:
            message = out.choices[0].message  # type: ignore[union-attr]
            reasoning, content = getattr(message, "reasoning_content", ""), message.content or ""
        assert reasoning.isalpha() and content.isalpha() and "<" not in content + reasoning
