"""Chat and text completion against a running `infermcp serve` with the official openai client.

    make serve            # in one terminal
    .venv/bin/python examples/openai_client.py
"""

from __future__ import annotations

import os

from openai import OpenAI


def main() -> None:
    base_url = os.environ.get("INFERMCP_URL", "http://127.0.0.1:8080/v1")
    client = OpenAI(base_url=base_url, api_key=os.environ.get("INFERMCP_API_KEY", "unused"))
    reply = client.chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "You are concise."},
                  {"role": "user", "content": "Name three colours."}],
        max_tokens=48,
        temperature=0.7,
        seed=1,
        extra_body={"top_k": 40, "min_p": 0.05},
    )
    print("chat:", reply.choices[0].message.content, f"({reply.usage})")

    print("stream: ", end="")
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=32, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        elif chunk.usage:
            print(f"\n  usage: {chunk.usage}")

    text = client.completions.create(model="default", prompt="The capital of France is",
                                     max_tokens=8, temperature=0)
    print("completion:", repr(text.choices[0].text))


if __name__ == "__main__":
    main()
