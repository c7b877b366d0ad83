"""The shapes world's CLIP tokenizer: one token per world word, in the real CLIP file format."""

from __future__ import annotations

import json
from pathlib import Path

from sdflow.models.clip_vocab import END_TOKEN, START_TOKEN, end_token_id, write_clip_tokenizer_files

from .vocabulary import world_words

# model_max_length must be explicit: without it transformers 5 overflows when padding.
TOKENIZER_CONFIG = {
    "model_max_length": 77,
    "bos_token": START_TOKEN,
    "eos_token": END_TOKEN,
    "unk_token": END_TOKEN,
    "pad_token": END_TOKEN,
    "tokenizer_class": "CLIPTokenizer",
}


def write_world_tokenizer(out_dir: str | Path) -> int:
    """Write vocab.json, merges.txt and tokenizer_config.json to ``out_dir``; return the EOS id.

    The EOS id goes into the text encoder's config (``eos_token_id``), which is where CLIP reads
    its pooled embedding; a config left at the legacy id 2 would pool at the wrong place.
    """
    out_dir = Path(out_dir)
    write_clip_tokenizer_files(world_words(), out_dir)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n", encoding="utf-8")
    return end_token_id(out_dir)
