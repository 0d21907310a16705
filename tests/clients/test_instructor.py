"""instructor with a JSON schema: the engine's grammar makes whatever the model samples parse."""

from __future__ import annotations

import instructor
import openai
import pydantic

from tests.clients.served import CHAT


class Count(pydantic.BaseModel):
    n: int


def test_json_schema_mode_parses_into_the_model(v1: str) -> None:
    # Mode.JSON_SCHEMA sends response_format {"type": "json_schema", ...}; llama.cpp turns
    # it into a grammar, so even the random model can only emit a valid Count. The grammar
    # bounds digits and whitespace, so its longest document is well under 400 tokens.
    client = instructor.from_openai(openai.OpenAI(base_url=v1, api_key="lmforge", max_retries=0),
                                    mode=instructor.Mode.JSON_SCHEMA)
    count = client.chat.completions.create(model=CHAT, response_model=Count, max_retries=0, max_tokens=400,
                                           messages=[{"role": "user", "content": "count to three"}])
    assert isinstance(count, Count) and isinstance(count.n, int)
