"""Text-tower helpers: a tiny BERT WordPiece tokenizer built from prompt texts, and tokenisation with explicit length.

The vocabulary is built by hand (whole words of the given texts + single characters and ``##`` continuations as a
fallback) because training a WordPiece model needs the ``tokenizers`` trainer and a corpus; a few hundred prompts
need neither. transformers' ``BertTokenizer(vocab=dict)`` then does the real tokenisation (``vocab_file=`` is
silently ignored in transformers 5, so the dict is passed directly).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from typing import Any

import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def wordpiece_vocab(texts: Iterable[str]) -> dict[str, int]:
    """Special tokens, then single characters and their ``##`` forms, then every lower-cased word of ``texts``."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer = BertNormalizer(lowercase=True)
    pre = BertPreTokenizer()
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words: list[str] = []
    seen: set[str] = set()
    for text in texts:
        for w, _span in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            if w not in seen:
                seen.add(w)
                words.append(w)
    tokens: list[str] = list(SPECIAL_TOKENS)
    for t in [*chars, *(f"##{c}" for c in chars), *sorted(words)]:
        if t not in tokens:
            tokens.append(t)
    return {t: i for i, t in enumerate(tokens)}


def build_tokenizer(texts: Iterable[str], max_length: int) -> Any:
    """A BertTokenizer (uncased WordPiece) whose vocabulary covers ``texts``; ``model_max_length`` = ``max_length``."""
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab=wordpiece_vocab(texts), do_lower_case=True)
    tok.model_max_length = int(max_length)
    return tok


def load_tokenizer(source: str) -> Any:
    """AutoTokenizer from a local dir or hub id (offline users pass a local dir)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask [K, max_length]: padded to ``max_length`` and truncated there (always explicit)."""
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=int(max_length),
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
