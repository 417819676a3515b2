"""Incremental detokenization: the text deltas of a generation, token by token (streaming).

Why not ``decode(new_token)``: byte-level and SentencePiece tokenizers spread one character over
several tokens, and a token's text can depend on its left neighbour (leading spaces). We keep
two offsets into the generated ids (as vLLM does): the text of ``ids[prefix:read]`` was already
sent; decoding ``ids[prefix:]`` and cutting that prefix off gives exactly the new characters.
A delta that ends in U+FFFD is an incomplete UTF-8 sequence: wait for the next token.

Stop strings: the engine cuts the final text where a stop string starts, so a stream must not send
characters that a stop string might still claim: the last ``len(longest stop) - 1`` characters
are held back, and nothing from a complete stop string on is ever sent; ``finish`` gets the final
text. For prefix-stable decoders (byte-level BPE, SentencePiece) the deltas concatenated equal
the response's text; otherwise the stream ends short, never wrong (the response is the truth).
"""

from __future__ import annotations

from typing import Any


class Detokenizer:
    def __init__(self, tokenizer: Any, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = list(stop or [])
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text that was already accounted for
        self.read = 0
        self.text = ""  # every character decoded so far (complete characters only)
        self.sent = 0  # characters of ``text`` handed out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the characters that are now safe to show ('' if none)."""
        self.ids.append(token_id)
        if self.tokenizer is None:
            return ""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        safe = len(self.text) - self.hold
        for s in self.stop:
            i = self.text.find(s, max(0, self.sent - len(s) + 1))
            if i >= 0:
                safe = min(safe, i)
        safe = max(safe, self.sent)
        delta, self.sent = self.text[self.sent : safe], safe
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of the final text. If the stream ever disagreed with it (a tokenizer whose
        decoding is not prefix-stable), the stream stays short rather than wrong twice."""
        shown = self.text[: self.sent]
        if not final_text.startswith(shown):
            return ""
        self.sent = len(final_text)
        return final_text[len(shown) :]
