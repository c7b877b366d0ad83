"""Prompt weighting and long prompts, with AUTOMATIC1111's web UI semantics.

Syntax (as A1111's ``prompt_parser.parse_prompt_attention`` reads it; written here from its documented behaviour):
``(text:1.3)`` multiplies the weight of ``text`` by 1.3, ``(text)`` by 1.1, ``[text]`` divides it by 1.1,
brackets nest and multiply, ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literal characters, an unclosed
bracket applies to the end of the prompt, and the word ``BREAK`` (in capitals) ends the current chunk.

Long prompts: the text is tokenized without special tokens and cut into chunks of 75 tokens (the encoder's
77 positions less BOS and EOS); each chunk is encoded on its own as BOS + tokens + EOS + padding, each
token's hidden state is multiplied by its weight, and the chunk is rescaled so its mean equals the mean it
had before weighting (A1111's "Original" emphasis). The chunks' states are concatenated along the token
axis, so the UNet attends to 77 x N tokens. A prompt and its negative must have the same length: the shorter
is padded with the encoding of an empty chunk (BOS, EOS, padding), as A1111 pads it. Nothing is truncated.

Differences from A1111, on purpose: the mean is restored per text and chunk (A1111 takes it over the batch,
which makes an image depend on the prompts it was batched with); chunks are cut at exactly 75 tokens (A1111's
"word wrap" option, which moves text after a nearby comma into the next chunk, is not followed).
A plain prompt that fits one chunk gives exactly the ids diffusers' pipelines tokenize, weights are then all
1 and skipped, so its embedding is the pipelines' own, bit for bit.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

log = logging.getLogger("sdflow")
ROUND, SQUARE = 1.1, 1 / 1.1
BREAK = "BREAK"
# One lexical piece of a prompt: an escape, a bracket, ":number)" closing a weight, text, or a lone ':'.
_PIECE = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_SYNTAX = re.compile(r"[()\[\]\\]|\bBREAK\b")


def has_syntax(text: str) -> bool:
    """Whether ``text`` uses any weighting syntax (brackets, escapes, BREAK)."""
    return bool(_SYNTAX.search(text))


def parse_weights(text: str) -> list[tuple[str, float]]:
    """``text`` as (fragment, weight) pairs, neighbours of equal weight merged; ``(BREAK, -1.0)`` ends a chunk.

    >>> parse_weights("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    >>> parse_weights("a (house:1.3) [on] \\\\(hill\\\\)")
    [('a ', 1.0), ('house', 1.3), (' ', 1.0), ('on', 0.9090909090909091), (' (hill)', 1.0)]
    """
    pieces: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece[0] != BREAK:
                piece[1] *= factor

    for match in _PIECE.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            pieces.append([piece[1:], 1.0])
        elif piece == "(":
            open_round.append(len(pieces))
        elif piece == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round:
            scale(open_round.pop(), float(weight))
        elif piece == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif piece == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        else:  # text, or a bracket or weight that closes nothing (kept as text)
            for i, part in enumerate(_BREAK.split(piece)):
                if i > 0:
                    pieces.append([BREAK, -1.0])
                pieces.append([part, 1.0])
    for start in open_round:  # unclosed brackets apply to the end of the prompt
        scale(start, ROUND)
    for start in open_square:
        scale(start, SQUARE)
    merged: list[list] = []
    for piece in pieces or [["", 1.0]]:
        if merged and merged[-1][1] == piece[1] and BREAK not in (piece[0], merged[-1][0]):
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(fragment, weight) for fragment, weight in merged]


@dataclass
class Chunk:
    """One encoder pass: ``ids`` (BOS, tokens, EOS, padding: the encoder's full length), each id's weight,
    and ``length``, how many ids are real (BOS to EOS; the rest is padding)."""

    ids: list[int]
    weights: list[float]
    length: int


def chunk_prompt(tokenizer, text: str, size: int | None = None) -> list[Chunk]:
    """Tokenize ``text`` with weights and cut it into chunks of ``size`` ids (default: the tokenizer's 77)."""
    size = size or tokenizer.model_max_length
    per_chunk = size - 2
    parsed = parse_weights(text) if has_syntax(text) else [(text, 1.0)]
    chunks: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []

    def close() -> None:
        pad = size - 2 - len(tokens)
        # BOS, tokens, EOS, then the tokenizer's padding id (EOS for SD1's; "!" for SD2's and SDXL's second)
        chunks.append(Chunk([tokenizer.bos_token_id] + tokens + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad,
                            [1.0] + weights + [1.0] * (pad + 1), len(tokens) + 2))
        tokens.clear()
        weights.clear()

    for fragment, weight in parsed:
        if fragment == BREAK:
            close()
            continue
        fragment = expand_multi_vector(tokenizer, fragment)
        # verbose=False: no warning that the ids exceed 77 (they are cut into chunks below)
        for token in tokenizer(fragment, add_special_tokens=False, truncation=False, verbose=False).input_ids:
            if len(tokens) == per_chunk:
                close()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        close()
    return chunks


def expand_multi_vector(tokenizer, text: str) -> str:
    """A textual-inversion word of N vectors written as its N tokens (``word word_1 word_2``), as diffusers'
    ``maybe_convert_prompt`` writes it; unchanged when the tokenizer has no multi-vector words."""
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    if not any(f"{token}_1" in added for token in added):
        return text
    for token in set(tokenizer.tokenize(text)):
        if token in added:
            replacement, index = token, 1
            while f"{token}_{index}" in added:
                replacement += f" {token}_{index}"
                index += 1
            text = text.replace(token, replacement)
    return text


def weighted(hidden: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """[1, 77, dim] hidden states with each token's weight applied, then rescaled to the mean they had."""
    import torch

    if all(w == 1.0 for w in weights):
        return hidden
    original_mean = hidden.mean()
    scaled = hidden * torch.tensor(weights, dtype=hidden.dtype, device=hidden.device).reshape(1, -1, 1)
    new_mean = scaled.mean()
    return scaled * (original_mean / new_mean) if new_mean != 0 else scaled


def encode_chunks(chunks: list[Chunk], encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  device: str) -> list[torch.Tensor]:
    """``encode(ids [1, 77], attention_mask [1, 77])`` for every chunk, weights applied: a list of [1, 77, dim]."""
    import torch

    out = []
    for chunk in chunks:
        ids = torch.tensor([chunk.ids], device=device)
        mask = torch.tensor([[1] * chunk.length + [0] * (len(chunk.ids) - chunk.length)], device=device)
        with torch.no_grad():
            out.append(weighted(encode(ids, mask), chunk.weights))
    return out


def embed_prompt(text_encoder, tokenizer, text: str, device: str) -> torch.Tensor:
    """[1, 77 x chunks, dim] last hidden states of a (long, weighted) prompt, for SD1/SD2 encoders."""
    import torch

    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    size = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    chunks = chunk_prompt(tokenizer, text, size)
    return torch.cat(encode_chunks(
        chunks, lambda ids, mask: text_encoder(ids, attention_mask=mask if use_mask else None)[0], device), dim=1)


def embed_prompt_sdxl(text_encoders, tokenizers, text: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: [1, 77 x chunks, sum of widths] penultimate states of each encoder (weighted per encoder, as A1111
    weights each of its two embedders), and the pooled embedding of the first chunk from the projection encoder."""
    import torch

    hidden, pooled = [], None
    for encoder, tokenizer in zip(text_encoders, tokenizers):
        chunks = chunk_prompt(tokenizer, text, min(tokenizer.model_max_length, encoder.config.max_position_embeddings))
        pools = []

        def encode(ids, mask, encoder=encoder):
            out = encoder(ids, output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection's projected text_embeds
                pools.append(out[0])
            return out.hidden_states[-2]  # SDXL reads the penultimate layer

        hidden.append(encode_chunks(chunks, encode, device))
        if pooled is None and pools:
            pooled = pools[0]
    count = max(len(states) for states in hidden)
    if any(len(states) != count for states in hidden):  # tokenizers that cut the text differently
        raise ValueError(f"the two SDXL tokenizers split the prompt into {' and '.join(str(len(h)) for h in hidden)} "
                         "chunks; use a shorter prompt or BREAK to make the chunks agree")
    return torch.cat([torch.cat(states, dim=-1) for states in zip(*hidden)], dim=1), pooled


def common_length(embeddings: list[torch.Tensor], owners: list[int], empty: Callable[[], torch.Tensor], node_id: str,
                  warnings: list[str]) -> list[torch.Tensor]:
    """[1, 77 x n, dim] embeddings (prompts and negatives) padded with the encoded empty chunk to the longest.

    A prompt and its negative of different lengths are padded as A1111 pads them. ``owners[i]`` is the image
    of ``embeddings[i]``: an image padded past its own texts' length only to share the batch with longer
    prompts differs slightly from the same image made alone, which is said in a warning naming the node (logged and
    added to ``warnings``, the run record's).
    ``empty()`` is called only when something needs padding.
    """
    import torch

    lengths = [e.shape[1] for e in embeddings]
    longest = max(lengths)
    if all(n == longest for n in lengths):
        return embeddings
    pad = empty()
    own = {}
    for owner, n in zip(owners, lengths):
        own[owner] = max(own.get(owner, 0), n)
    padded = sorted(i for i, n in own.items() if n < longest)
    if padded:
        chunk = pad.shape[1]
        message = (f"node '{node_id}': the prompts of image(s) {', '.join(map(str, padded))} were padded "
                   f"to {longest // chunk} chunks of {chunk} tokens to share a batch with "
                   "longer prompts, so they differ slightly from the same images made alone (give prompts of "
                   "different lengths separate runs to avoid it)")
        log.warning(message)
        warnings.append(message)
    return [e if e.shape[1] == longest else torch.cat([e] + [pad] * ((longest - e.shape[1]) // pad.shape[1]), dim=1)
            for e in embeddings]
