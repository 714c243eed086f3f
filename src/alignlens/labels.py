"""Label-word token sets: which next tokens count as answering a label word.

The paper's rule (`process_tokens` and `unicode_prefix_tokid` in its `zsm_emotion_2shot.py`, for
SentencePiece vocabularies): every vocabulary token equal to a non-empty prefix of the word, with or
without the leading word-boundary marker "▁", plus -- only when the word's first character is
non-ASCII -- the byte-fallback token `<0xNN>` of its first UTF-8 byte, where the vocabulary has one
(`byte_fallback_token`). For byte-level BPE vocabularies (GPT-2, Llama 3, Qwen) the same rule is
applied to bytes: every token whose bytes are a non-empty prefix of the word's UTF-8 bytes, with or
without a leading space byte ("Ġ"); this contains the paper's extra Qwen rule (the first token of
each encoded prefix).

The logit lens also needs to know when a label's English word and its target-language word
cannot be told apart (`label_overlap`).

Vocabularies are cached per tokenizer object in a module-level weak-keyed table (the tokenizer
itself is never modified); the entry goes when the tokenizer does.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from alignlens import AlignlensError
from alignlens.config import LENS_OVERLAP_RULES

SP_MARKER = "▁"

# tokenizer -> its vocabulary (token -> id); an entry lives as long as its tokenizer
_VOCABS: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


@lru_cache(maxsize=1)
def _byte_encoder() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def vocabulary(tokenizer: Any) -> dict[str, int]:
    """token -> id of `tokenizer`, read once per tokenizer object (Gemma's has 262k entries)."""
    try:
        cached = _VOCABS.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced or hashed: no cache
        return tokenizer.get_vocab()
    if cached is None:
        cached = _VOCABS[tokenizer] = tokenizer.get_vocab()
    return cached


def vocab_kind(tokenizer: Any) -> str:
    """`sentencepiece` (▁ word-boundary marker) or `bytelevel` (GPT-2 byte alphabet)."""
    vocab = vocabulary(tokenizer)
    n_sp = sum(1 for t in vocab if t.startswith(SP_MARKER))
    n_bl = sum(1 for t in vocab if t.startswith("Ġ"))
    return "sentencepiece" if n_sp >= n_bl else "bytelevel"


def byte_fallback_token(word: str) -> str | None:
    """The byte-fallback token name `<0xNN>` (NN: the first UTF-8 byte, upper-case hex) that the
    paper's `unicode_prefix_tokid(word[0])` adds to a word's token set, or None where it adds none.

    The paper tests `str(word[0].encode())[2:-1].startswith('\\x')`: Python writes a byte as `\\xNN`
    exactly when it is >= 0x80 (every byte of a non-ASCII character) or an ASCII control byte other
    than tab, newline and carriage return (written `\\t`, `\\n`, `\\r`). So an ASCII word gets no byte
    token ("positive" -> None) and a non-ASCII one gets its first byte's ("积极" -> "<0xE7>")."""
    if not word:
        return None
    first = word.encode("utf-8")[0]
    hex_escaped = first >= 0x80 or first == 0x7F or (first < 0x20 and first not in (0x09, 0x0A, 0x0D))
    return f"<0x{first:02X}>" if hex_escaped else None


def label_token_ids(tokenizer: Any, word: str, where: str = "") -> list[int]:
    """Token ids whose probabilities are summed for `word` (see the module docstring). Sorted.

    `where` (e.g. "task snli, language de, label 'neutral'") starts the error messages."""
    at = f"{where}: " if where else ""
    if not word or not word.strip():
        raise AlignlensError(f"{at}empty label word")
    vocab = vocabulary(tokenizer)
    ids: set[int] = set()
    if vocab_kind(tokenizer) == "sentencepiece":
        for end in range(1, len(word) + 1):
            prefix = word[:end]
            for tok in (prefix, SP_MARKER + prefix):
                if tok in vocab:
                    ids.add(vocab[tok])
        byte_tok = byte_fallback_token(word)
        if byte_tok is not None and byte_tok in vocab:
            ids.add(vocab[byte_tok])
    else:
        enc = _byte_encoder()
        raw = word.encode("utf-8")
        for end in range(1, len(raw) + 1):
            prefix = "".join(enc[b] for b in raw[:end])
            for tok in (prefix, enc[ord(" ")] + prefix):
                if tok in vocab:
                    ids.add(vocab[tok])
    if not ids:
        raise AlignlensError(f"{at}no vocabulary token matches a prefix of the label word {word!r}")
    return sorted(ids)


def label_sets(tokenizer: Any, words: Sequence[str], where: str = "") -> list[list[int]]:
    """Token sets of `words`; `where` (e.g. "task snli, language de") names them in errors."""
    return [label_token_ids(tokenizer, w, f"{where}, label {w!r}" if where else f"label {w!r}") for w in words]


def first_tokens(tokenizer: Any, word: str) -> set[int]:
    """First token of `word` as the tokenizer encodes it, standing alone and after a space."""
    out = set()
    for text in (word, " " + word):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            out.add(ids[0])
    return out


def label_overlap(tokenizer: Any, labels: Sequence[str], words: Sequence[str], sets_en: Sequence[Sequence[int]],
                  sets_target: Sequence[Sequence[int]], rule: str = "token-set") -> list[bool]:
    """Per label: do its English and target-language words collide, so the lens cannot tell them apart?

    `token-set`: their token sets (every prefix token, see `label_token_ids`) share a token;
    strict: words starting with the same letter collide. `first-token`: their first tokens as the
    tokenizer encodes them are the same (Wendler et al. 2024's rule).
    """
    if rule == "token-set":
        return [bool(set(a) & set(b)) for a, b in zip(sets_en, sets_target)]
    if rule == "first-token":
        return [bool(first_tokens(tokenizer, e) & first_tokens(tokenizer, t)) for e, t in zip(labels, words)]
    raise AlignlensError(f"unknown lens overlap rule {rule!r} (use {', '.join(LENS_OVERLAP_RULES)})")
