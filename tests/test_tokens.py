"""livegen's tokenizer (tokenizers alone) encodes as transformers' BertTokenizer does from the same files."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertTokenizer

from livegen.models.embedded import EMBEDDED_MODEL, TEXT_TOKENS, minilm_path
from livegen.models.tokens import Tokenizer

FOLDERS = {"MiniLM's": minilm_path(), "the embedded model's": EMBEDDED_MODEL / "tokenizer"}
TEXTS = st.lists(st.text(max_size=300), min_size=1, max_size=4)


@pytest.fixture(scope="module", params=list(FOLDERS))
def tokenizers(request):
    folder = FOLDERS[request.param]
    return Tokenizer.read(folder, TEXT_TOKENS), BertTokenizer.from_pretrained(folder, model_max_length=TEXT_TOKENS)


@settings(max_examples=150, deadline=None)
@given(texts=TEXTS)
def test_padded_to_the_longest(tokenizers, texts):
    ours, theirs = tokenizers
    ids, mask = ours(texts)
    expected = theirs(texts, padding=True, truncation=True, return_tensors="pt")
    assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask)


@settings(max_examples=50, deadline=None)
@given(texts=TEXTS)
def test_padded_to_a_length(tokenizers, texts):
    ours, theirs = tokenizers
    ids, mask = ours(texts, pad_to=TEXT_TOKENS)
    expected = theirs(texts, padding="max_length", max_length=TEXT_TOKENS, truncation=True, return_tensors="pt")
    assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask)
