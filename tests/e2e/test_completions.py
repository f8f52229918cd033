"""Text completions through the official `openai` client against the real server."""

from __future__ import annotations

import openai

from core.models.tokenizer import Tokenizer

PROMPT = "The three primary colours are"


def test_completion_text_and_usage(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    r = client.completions.create(model="default", prompt=PROMPT, max_tokens=10, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert r.usage.completion_tokens == 10


def test_streamed_completion_equals_non_streamed(client: openai.OpenAI) -> None:
    args = {"model": "default", "prompt": PROMPT, "max_tokens": 24, "temperature": 0.8,
            "seed": 3}
    whole = client.completions.create(**args).choices[0].text  # type: ignore[call-overload]
    stream = client.completions.create(stream=True, **args)  # type: ignore[call-overload]
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices].count(None) == len(chunks) - 1


def test_token_id_prompts_and_batches(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(PROMPT)
    by_text = client.completions.create(model="default", prompt=PROMPT, max_tokens=6,
                                        temperature=0)
    by_ids = client.completions.create(model="default", prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(model="default", prompt=[ids, "Once upon a time"],
                                      max_tokens=4, temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text
    assert batch.usage is not None
    assert batch.usage.prompt_tokens == len(ids) + len(tokenizer.encode("Once upon a time"))


def test_echo_prepends_prompt(client: openai.OpenAI) -> None:
    r = client.completions.create(model="default", prompt=PROMPT, max_tokens=4, temperature=0,
                                  echo=True)
    assert r.choices[0].text.startswith(PROMPT)
    assert len(r.choices[0].text) > len(PROMPT)


def test_logprobs_legacy_shape(client: openai.OpenAI) -> None:
    r = client.completions.create(model="default", prompt=PROMPT, max_tokens=5, temperature=0,
                                  logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == 5
    assert lp.top_logprobs is not None and all(len(t) == 3 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]


def test_stop_string_in_completion(client: openai.OpenAI) -> None:
    args = {"model": "default", "prompt": PROMPT, "max_tokens": 20, "temperature": 0}
    full = client.completions.create(**args).choices[0].text  # type: ignore[call-overload]
    stop = full[5:8]
    r = client.completions.create(stop=stop, **args)  # type: ignore[call-overload]
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
