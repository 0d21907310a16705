"""What the shared client-test instance serves: model names and what the cycle model says.

The random "chat" model may stop at any token: a test that reads text, a count or a
finish reason asks the "cycle" model, which streams " hello world" forever, so a token
limit gives an exact answer.
"""

from __future__ import annotations

CHAT = "tiny:chat"
CYCLE = "tiny:cycle"
EMBED = "tiny:embed"
RERANK = "tiny:rerank"
GEMMA = "gemma3:270m"
CYCLE_TEXT = " hello world"  # two tokens
EMBED_DIMS = 64
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def cycle_text(tokens: int) -> str:
    """What the cycle model says in `tokens` tokens (an even number)."""
    return CYCLE_TEXT * (tokens // 2)
