"""``infermcp serve --state-url postgresql://…``: stored responses and their conversations live in
PostgreSQL (the session's own server, tests/pg_server.py), not under the state directory, and
outlive the server."""

from __future__ import annotations

from pathlib import Path

import openai
import psycopg
import pytest

from tests.e2e.conftest import launch
from tests.e2e.test_responses import ASK, CODE_WORD, GREEDY, TELL
from tests.pg_server import PostgresServer

ARGS = ["--embedding-model", "none", "--max-seq-len", "512", "--max-seqs", "4", "--seed", "0"]


def test_conversation_in_postgresql_survives_a_restart(
        tmp_path: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres.new_database()
    state = tmp_path / "state"
    monkeypatch.setenv("INFERMCP_STATE_DIR", str(state))  # --state-url replaces it
    args = ["--state-url", url, *ARGS]
    with launch(args, tmp_path / "first.log") as first:
        client = openai.OpenAI(base_url=f"{first.base_url}/v1", api_key="unused", max_retries=0)
        told = client.responses.create(input=TELL, max_output_tokens=24, **GREEDY)
        asked = client.responses.create(input=ASK, previous_response_id=told.id,
                                        max_output_tokens=16, **GREEDY)
        assert CODE_WORD in asked.output_text.upper()
    assert not state.exists()
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, jsonb_array_length(history) FROM responses "
                            "ORDER BY created_at, id").fetchall()
    assert sorted(rows) == sorted([(told.id, 2), (asked.id, 4)])
    with launch(args, tmp_path / "second.log") as second:
        client = openai.OpenAI(base_url=f"{second.base_url}/v1", api_key="unused",
                               max_retries=0)
        assert client.responses.retrieve(told.id).model_dump() == told.model_dump()
        assert client.responses.retrieve(asked.id).model_dump() == asked.model_dump()
        again = client.responses.create(input=ASK, previous_response_id=told.id,
                                        max_output_tokens=16, **GREEDY)
        assert CODE_WORD in again.output_text.upper()  # the conversation, read back whole
        client.responses.delete(told.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(told.id)
