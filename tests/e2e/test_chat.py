"""Chat completions through the official `openai` client against the real server."""

from __future__ import annotations

import uuid

import openai

from core.models.tokenizer import Tokenizer
from tests.e2e.conftest import Server

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours."}]


def stream_text(client: openai.OpenAI, **kwargs: object) -> tuple[str, list[str | None]]:
    stream = client.chat.completions.create(stream=True, **kwargs)  # type: ignore[call-overload]
    text, reasons = "", []
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reasons.append(choice.finish_reason)
    return text, reasons


def test_chat_returns_text_and_usage(client: openai.OpenAI, server: Server) -> None:
    r = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=24,
                                       temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == server.model_id
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_repeated_prompt_reports_the_tokens_it_read_from_the_prefix_cache(
        client: openai.OpenAI) -> None:
    # a prompt no other request has sent, from its first block on
    messages = [{"role": "system", "content": f"{uuid.uuid4()}. " + "You answer in one word. " * 8},
                {"role": "user", "content": "Which colour is unusual?"}]
    args = {"model": "default", "messages": messages, "max_tokens": 2, "temperature": 0}
    first = client.chat.completions.create(**args).usage  # type: ignore[call-overload]
    second = client.chat.completions.create(**args).usage  # type: ignore[call-overload]
    streamed = list(client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **args))[-1].usage  # type: ignore[call-overload]
    assert first is not None and second is not None and streamed is not None
    assert first.prompt_tokens == second.prompt_tokens > 48
    cached = [u.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
              for u in (first, second, streamed)]
    assert cached[0] == 0
    # every whole block of 16 tokens but the last token's, which must be computed
    assert cached[1] == cached[2] == (second.prompt_tokens - 1) // 16 * 16


def test_model_may_be_named_by_its_id(client: openai.OpenAI, server: Server) -> None:
    r = client.chat.completions.create(model=server.model_id, messages=MESSAGES, max_tokens=2)
    assert r.model == server.model_id


def test_streamed_text_equals_non_streamed_for_same_seed(client: openai.OpenAI) -> None:
    args = {"model": "default", "messages": MESSAGES, "max_tokens": 40, "temperature": 0.9,
            "seed": 1234}
    whole = client.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    streamed, reasons = stream_text(client, **args)
    assert streamed == whole
    assert sum(r is not None for r in reasons) == 1


def test_stream_chunk_shape_and_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.created for c in chunks} == {chunks[0].created}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks[:-1]].count("length") == 1


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=3,
                                       temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="default", messages=MESSAGES,
                                       max_completion_tokens=2, temperature=0)
    assert r.usage is not None and r.usage.completion_tokens == 2


def test_stop_string_is_cut_and_never_emitted(client: openai.OpenAI) -> None:
    args = {"model": "default", "messages": MESSAGES, "max_tokens": 30, "temperature": 0}
    full = client.chat.completions.create(**args).choices[0].message.content or ""  # type: ignore[call-overload]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3
    expected = full[: full.index(stop)]
    r = client.chat.completions.create(stop=[stop], **args)  # type: ignore[call-overload]
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "stop"
    streamed, _ = stream_text(client, stop=stop, **args)
    assert streamed == expected


def test_usage_matches_tokenizer(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    r = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=12,
                                       temperature=0, logprobs=True)
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(tokenizer.encode_chat(MESSAGES))
    assert r.choices[0].logprobs is not None and r.choices[0].logprobs.content is not None
    assert r.usage.completion_tokens == len(r.choices[0].logprobs.content)


def test_logprobs_shape(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 5
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.token == entry.top_logprobs[0].token
        assert entry.logprob == entry.top_logprobs[0].logprob


def test_streamed_logprobs(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=4,
                                            temperature=0, logprobs=True, top_logprobs=2,
                                            stream=True)
    entries = [e for c in stream for ch in c.choices if ch.logprobs and ch.logprobs.content
               for e in ch.logprobs.content]
    assert len(entries) == 4
    assert all(len(e.top_logprobs) == 2 for e in entries)


def test_n_two_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=6, n=2,
                                       temperature=1.0, seed=5, logprobs=True)
    assert [c.index for c in r.choices] == [0, 1]
    counts = [len(c.logprobs.content or []) for c in r.choices]  # type: ignore[union-attr]
    assert r.usage is not None and r.usage.completion_tokens == sum(counts)


def test_n_two_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=5,
                                            n=2, temperature=0, stream=True)
    texts = {0: "", 1: ""}
    finished = []
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.append(choice.index)
    assert sorted(finished) == [0, 1]
    assert texts[0] == texts[1] != ""


def test_seed_reproducible(client: openai.OpenAI) -> None:
    args = {"model": "default", "messages": MESSAGES, "max_tokens": 16, "temperature": 1.0,
            "seed": 99}
    a = client.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    b = client.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    assert a == b


def test_content_parts_and_developer_role(client: openai.OpenAI) -> None:
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Say "},
                                             {"type": "text", "text": "hello."}]}]
    r = client.chat.completions.create(model="default", messages=messages,  # type: ignore[arg-type]
                                       max_tokens=4, temperature=0)
    assert r.choices[0].message.content


def test_truncate_sequence_keeps_newest_tokens(client: openai.OpenAI) -> None:
    long_text = "word " * 1500
    r = client.chat.completions.create(model="default", max_tokens=4, temperature=0,
                                       messages=[{"role": "user", "content": long_text}],
                                       extra_body={"truncate_sequence": True})
    assert r.usage is not None
    assert r.usage.prompt_tokens == 1024 - 4
    assert r.usage.completion_tokens <= 4


def test_extension_fields_accepted(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=4, temperature=0.7, user="u-1",
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True,
                    "min_tokens": 4, "metadata": {"a": "b"}, "service_tier": "auto"})
    assert r.usage is not None and r.usage.completion_tokens == 4
