"""Tokens as text, the way OpenAI's `logprobs` show them: each token's string and where it starts.

A byte-level tokenizer can split one character over several tokens (an emoji is four bytes, a
Chinese character three). Decoded alone, such a token is only a replacement character '�', and
counting it as one character of text shifts every offset after it. Here a token that holds part
of a character shows as `bytes:\\xf0\\x9f` (OpenAI's form), and its offset is where that character
starts in the decoded text, so `text[offset:]` always begins at a character the token helps make.

    spans = token_spans(tokenizer, ids)           # [(shown, offset), ...], offsets into decode(ids)
    spans = token_spans(tokenizer, new_ids, start=len(prompt_text), context=prompt_ids)  # after a prompt
"""

from __future__ import annotations

import codecs
from functools import lru_cache

REPLACEMENT = "\ufffd"
MAX_RUN = 16
"""Tokens a run waits for a character to complete; bytes that are not UTF-8 never complete one."""
CONTEXT = 4
"""Tokens decoded before each token, so that its text is what it adds in the middle of a text."""


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """The printable stand-in for each byte in GPT-2-style byte-level vocabularies: printable
    Latin-1 bytes stand for themselves, the others for code points from 256 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [byte for byte in range(256) if byte not in kept]
    return {chr(byte): byte for byte in kept} | {chr(256 + i): byte for i, byte in enumerate(moved)}


def token_bytes(tokenizer, token: int) -> bytes | None:
    """The raw bytes of a token, where the vocabulary says them: byte-level entries, or
    SentencePiece's byte-fallback pieces `<0xE4>`; None otherwise."""
    piece = tokenizer.convert_ids_to_tokens(token)
    if piece is None:
        return None
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            return None
    alphabet = byte_level_alphabet()
    if _decodes_bytes(tokenizer) and all(char in alphabet for char in piece):
        return bytes(alphabet[char] for char in piece)
    return None


def _decodes_bytes(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return type(decoder).__name__ == "ByteLevel" or "ByteLevel" in repr(decoder)


def shown(tokenizer, token: int, before: list[int] = ()) -> str:
    """A token's string in `logprobs`, as it reads after the ids `before` (their last few): its text
    there (a SentencePiece word keeps its leading space), or `bytes:\\xNN...` where the token holds
    part of a character."""
    alone = tokenizer.decode([token])
    if REPLACEMENT in alone:
        raw = token_bytes(tokenizer, token)
        if raw is not None:
            return "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)
        return alone
    before = list(before)[-CONTEXT:]
    if not before:
        return alone
    head = tokenizer.decode(before)
    text = tokenizer.decode([*before, token])
    return text[len(head):] if text.startswith(head) else alone


def token_spans(tokenizer, ids: list[int], start: int = 0, context: list[int] = ()) -> list[tuple[str, int]]:
    """(shown string, offset) per token; offsets count characters of the decoded text from `start`.

    `context`: the ids before these (a prompt not echoed), whose last few are decoded with them, so
    that a tokenizer that drops a leading space at the start of a text (SentencePiece) keeps it
    here. Each token's text is what decoding it after a few tokens of context adds; a token that
    ends inside a character waits for the tokens that finish it, and starts where its finished
    characters do.
    """
    every = list(context)[-CONTEXT:] + list(ids)
    spans: list[tuple[str, int]] = []
    at, done = start, len(every) - len(ids)  # `at` characters come before every[done]; later tokens wait
    for i in range(done, len(every)):
        before = every[max(0, i - CONTEXT) : i]
        spans.append((shown(tokenizer, every[i], before), at + _finished(tokenizer, every[done:i])[0]))
        left = max(0, done - CONTEXT)
        added = tokenizer.decode(every[left : i + 1])[len(tokenizer.decode(every[left:done])):]
        _, waits = _finished(tokenizer, every[done : i + 1], added)
        if not waits or i + 1 - done >= MAX_RUN:
            at, done = at + len(added), i + 1
    return spans


def _finished(tokenizer, run: list[int], text: str | None = None) -> tuple[int, bool]:
    """How many characters `run` finishes, and whether it ends inside one. Told by the tokens' bytes
    where the vocabulary gives them; else by its decoded `text` ending in a replacement character."""
    raw = [token_bytes(tokenizer, token) for token in run]
    if all(part is not None for part in raw):
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        finished = decoder.decode(b"".join(raw), final=False)
        return len(finished), bool(decoder.getstate()[0])
    return 0, bool(text and text.endswith(REPLACEMENT))
