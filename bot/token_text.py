"""Tokens as text, the way OpenAI's `logprobs` show them: each token's string and where it starts.

A byte-level tokenizer can split one character over several tokens (an emoji is four bytes, a
Chinese character three). Decoded alone, such a token is only a replacement character '�', and
counting it as one character of text shifts every offset after it. Here a token that holds part
of a character shows as `bytes:\\xf0\\x9f` (OpenAI's form), and its offset is where that character
starts in the decoded text, so `text[offset:]` always begins at a character the token helps make.

    spans = token_spans(tokenizer, ids)           # [(shown, offset), ...], offsets into decode(ids)
    spans = token_spans(tokenizer, ids, start=7)  # offsets counted from 7 (text before these ids)
"""

from __future__ import annotations

from functools import lru_cache

REPLACEMENT = "\ufffd"
MAX_RUN = 16
"""Tokens a run waits for a character to complete; bytes that are not UTF-8 never complete one."""


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


def shown(tokenizer, token: int) -> str:
    """A token's string in `logprobs`: its text, or `bytes:\\xNN...` where it holds part of a character."""
    text = tokenizer.decode([token])
    if REPLACEMENT not in text:
        return text
    raw = token_bytes(tokenizer, token)
    return text if raw is None else "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)


def token_spans(tokenizer, ids: list[int], start: int = 0) -> list[tuple[str, int]]:
    """(shown string, offset) per token; offsets count characters of `tokenizer.decode(ids)` from `start`.

    Tokens are decoded in runs that end on whole characters: a token that ends inside a character
    waits for the ones that finish it, and each token of the run starts where its text does.
    """
    spans: list[tuple[str, int]] = []
    at, run = start, []
    for token in ids:
        before = tokenizer.decode(run).rstrip(REPLACEMENT) if run else ""
        spans.append((shown(tokenizer, token), at + len(before)))
        run.append(token)
        text = tokenizer.decode(run)
        if not text.endswith(REPLACEMENT) or len(run) >= MAX_RUN:
            at += len(text)
            run = []
    return spans
