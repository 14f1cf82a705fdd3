"""A BERT tokenizer's ids and attention mask, read from its tokenizer.json by the tokenizers library.

What serving needs of a tokenizer (prompts, moderation) and no more: transformers' import costs a
cold start about a second on the 2-core CPU. It encodes as transformers' BertTokenizer does from the
same folder (tests/test_tokens.py compares them on generated text).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class Tokenizer:
    def __init__(self, definition: str, max_length: int):
        """`definition`: a tokenizer.json's text."""
        from tokenizers import Tokenizer as Backend

        self.backend = Backend.from_str(definition)
        padding = self.backend.padding
        self.pad_id = padding["pad_id"] if padding else self.backend.token_to_id("[PAD]")
        self.backend.no_padding()
        self.backend.enable_truncation(max_length)

    @classmethod
    def read(cls, folder: Path, max_length: int) -> Tokenizer:
        return cls((folder / "tokenizer.json").read_text(), max_length)

    def __call__(self, texts: list[str], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask), N x length int64: padded to the longest text, or to `pad_to` tokens."""
        encodings = [encoding.ids for encoding in self.backend.encode_batch(texts)]
        length = pad_to or max(map(len, encodings))
        ids = np.full((len(texts), length), self.pad_id, np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding)] = encoding
            mask[row, : len(encoding)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)
