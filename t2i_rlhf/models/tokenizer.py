"""A character-level CLIPTokenizer: the standard CLIP tokenizer class with a vocabulary of
single characters and no BPE merges, so a tiny text encoder can spell its way through prompts."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'-!?"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 48  # longest grammar prompt is 33 tokens with BOS/EOS


def build_char_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """Build the tokenizer and save it (save_pretrained) to `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tokens = list(CHARS) + [c + "</w>" for c in CHARS] + [BOS, EOS]
    tok = CLIPTokenizer(
        vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=MAX_LENGTH, pad_token=EOS
    )
    tok.save_pretrained(d)
    return tok
