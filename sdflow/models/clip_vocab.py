"""Write CLIP tokenizer files (vocab.json, merges.txt) for a small, chosen vocabulary.

No tokenizer can be downloaded here, so sdflow's own model families carry tokenizers made from a
word list. The files have the exact format of openai/clip-vit-large-patch14's, so the real
``CLIPTokenizer`` loads them. Merges are learned BPE-style (most frequent pair first, over all words
at once) rather than written word by word: hand-chained merges interfere across words ("q u" from
"quality" would split "square"), learned ones replay each training word into a single token.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is one token (its last symbol carries ``</w>``)."""
    byte_chars = bytes_to_unicode()
    segmentations = {}
    for word in sorted(set(words)):
        symbols = [byte_chars[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        segmentations[word] = symbols
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in segmentations.values():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += 1
        if not pairs:
            return merges
        # Most frequent first; ties broken by the pair itself so the files are deterministic.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in segmentations.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            segmentations[word] = merged


def write_clip_tokenizer_files(words: list[str], out_dir: str | Path) -> Path:
    """Write vocab.json and merges.txt covering every byte plus one token per word in ``words``.

    Every printable character is in the vocabulary (alone and word-final), so text outside the word
    list still tokenizes into characters instead of collapsing to ``<|endoftext|>``, which would move
    where CLIP reads its pooled embedding.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = [w.lower() for w in words]
    merges = learn_merges(words)
    base = list(bytes_to_unicode().values())
    vocab_tokens = base + [c + "</w>" for c in base] + ["".join(pair) for pair in merges] + [START_TOKEN, END_TOKEN]
    vocab = {}
    for token in vocab_tokens:
        vocab.setdefault(token, len(vocab))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    return out_dir


def end_token_id(out_dir: str | Path) -> int:
    """The id of ``<|endoftext|>`` in a vocabulary written by :func:`write_clip_tokenizer_files`."""
    vocab = json.loads((Path(out_dir) / "vocab.json").read_text(encoding="utf-8"))
    return vocab[END_TOKEN]
