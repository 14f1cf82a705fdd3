"""The natural-prompt split: hand-written everyday prompts, each with the emoji that count as right.

It must stay apart from training: no prompt may be one of the captions the dataset builds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from livegen.training.dataset import describe, emoji_table, render

SPLIT = Path(__file__).resolve().parents[1] / "livegen" / "training" / "natural_prompts.json"
KINDS = {"noun", "adjective", "description", "synonym", "misspelling", "plural"}


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return json.loads(SPLIT.read_text(encoding="utf-8"))


def test_shape_and_counts(items):
    assert len(items) >= 300
    for item in items:
        assert set(item) == {"prompt", "emoji", "kind"}, item
        assert item["kind"] in KINDS, item
        assert item["prompt"].strip() and item["prompt"] == item["prompt"].strip(), item
        assert item["emoji"] and len(set(item["emoji"])) == len(item["emoji"]), item
    per_kind = Counter(item["kind"] for item in items)
    assert set(per_kind) == KINDS
    assert min(per_kind.values()) >= 40, per_kind


def test_no_duplicate_prompts(items):
    repeated = [p for p, n in Counter(_normal(item["prompt"]) for item in items).items() if n > 1]
    assert not repeated


def test_every_emoji_is_in_the_dataset_and_drawn(items):
    table = {char for char, _ in emoji_table()}
    used = {char for item in items for char in item["emoji"]}
    assert not used - table, sorted(used - table)
    # Only the emoji the split uses: rendering the whole table takes seconds.
    assert not [char for char in sorted(used) if render(char, 64) is None]


def test_no_prompt_is_a_training_caption(items):
    captions = {_normal(caption) for char, data in emoji_table() for caption in describe(char, data).captions}
    copied = [item["prompt"] for item in items if _normal(item["prompt"]) in captions]
    assert not copied, copied
