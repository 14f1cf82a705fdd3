"""A model folder with a concept index draws each prompt as its nearest concept's name, and
moderation still reads the prompt as typed (models/concepts.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from livegen.config import embedded_model
from livegen.models.concepts import FOLDER, READ_WORDS, TOKEN, Concepts, english_words
from livegen.models.embedded import EMBEDDED_MODEL
from livegen.models.loader import load_generator
from livegen.safety.moderation import minilm_embedder

SMALL = (("honeybee", "bee", "insect"), ("house", "home", "building"), ("old key", "key", "lock", "password"),
         ("thumbs up, dark skin tone", "thumbs up dark skin tone"),
         ("thumbs up, medium-dark skin tone", "thumbs up medium-dark skin tone"))  # fmt: skip
SMALL_EMOJI = ("🐝", "🏠", "🗝️", "👍🏿", "👍🏾")


@pytest.fixture(scope="module")
def shipped() -> Concepts:
    concepts = Concepts.read(EMBEDDED_MODEL)
    assert concepts is not None
    return concepts


def drawn(concepts: Concepts, prompt: str) -> str:
    return concepts.drawn_text(prompt, minilm_embedder())


def test_an_index_is_written_and_read_back(tmp_path):
    index = Concepts.build(SMALL, minilm_embedder(), SMALL_EMOJI, batch=4)
    assert index.vectors.shape == (len(SMALL), 384)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-5)
    index.write(tmp_path)
    back = Concepts.read(tmp_path)
    assert back.phrases == SMALL and back.emoji == SMALL_EMOJI
    np.testing.assert_allclose(back.vectors, index.vectors, atol=2e-3)  # kept in float16


def test_a_folder_without_an_index_has_none(tmp_path):
    assert Concepts.read(tmp_path) is None


@pytest.mark.parametrize(("prompt", "name"), [("a bug that makes honey", "honeybee"), ("my home", "house"),
                                              ("a password", "old key"), ("thumbs up dark skin", "thumbs up, dark skin tone"),
                                              ("thumbs up, medium dark skin", "thumbs up, medium-dark skin tone")])  # fmt: skip
def test_a_prompt_is_drawn_as_the_concept_it_means(prompt, name):
    assert drawn(Concepts.build(SMALL, minilm_embedder()), prompt) == name


@pytest.mark.parametrize(("typed", "respelled"), [("a elefant", "a elephant"), ("an umbrela, please", "an umbrella, please"),
                                                  ("A Hambuger!", "a hamburger!")])  # fmt: skip
def test_a_word_nobody_spells_so_is_respelled_as_the_caption_word_it_slips_from(shipped, typed, respelled):
    assert shipped.respelled(typed) == respelled


@pytest.mark.parametrize("prompt", ["a grandpa", "a cat", "two cats on a mat", "a bqx", "a donut", "a spooky ladybug",
                                    "a motorbike"])
def test_english_words_caption_words_and_short_ones_are_left_alone(shipped, prompt):
    assert shipped.respelled(prompt) is prompt
    assert shipped.word_counts["cat"] >= 3 and "ladybug" in shipped.known_words  # MiniLM splits it in pieces
    assert shipped.respelled("a hous") == "a house"  # 4 letters: the shortest respelled


def test_english_words_are_kept_for_the_next_start(tmp_path, monkeypatch):
    import spellchecker

    words = english_words()
    monkeypatch.setenv("LIVEGEN_CACHE_DIR", str(tmp_path))
    english_words.cache_clear()
    assert english_words() == words and list(tmp_path.glob("words/english-*.txt"))
    english_words.cache_clear()
    monkeypatch.setattr(spellchecker, "SpellChecker", None)  # the kept words only
    try:
        assert english_words() == words
    finally:
        english_words.cache_clear()


def test_a_respelled_prompt_is_drawn_as_what_it_slipped_from(shipped):
    assert drawn(shipped, "a elefant") == "elephant"
    assert drawn(shipped, "a mushrom") == "mushroom"


@pytest.mark.parametrize(("prompt", "name"), [("🐝", "honeybee"), ("a 🏠 at night", "house"), ("🗝", "old key"),
                                              ("👍🏾", "thumbs up, medium-dark skin tone"), ("👍🏿👍🏿", "thumbs up, dark skin tone")])  # fmt: skip
def test_a_typed_emoji_is_drawn_as_itself(prompt, name):
    index = Concepts.build(SMALL, minilm_embedder(), SMALL_EMOJI)
    assert drawn(index, prompt) == name  # the variation selector typed or not; a skin tone is part of its emoji
    assert drawn(Concepts.build(SMALL, minilm_embedder()), "a 🏠 at night") != "house"  # an index without emoji


def test_the_shipped_index_knows_its_emoji(shipped):
    assert len(shipped.emoji) == len(shipped.phrases)
    assert shipped.emoji_as_concepts("a 🐝 on a 🌻") == "a  honeybee  on a  sunflower "
    assert drawn(shipped, "🐝") == "honeybee" and drawn(shipped, "❤️") == drawn(shipped, "❤") == "red heart"
    assert shipped.emoji_as_concepts("a bee, é") == "a bee, é"  # nothing it knows: the prompt itself


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(["🐝", "🏠", "\u200d", "\ufe0f", "👍", "🏿", "a", " ", "é"]), max_size=1000))
def test_any_run_of_emoji_is_read_in_bounded_words(shipped, prompt):
    text, _ = shipped.reading(prompt)
    assert len(text.split()) <= READ_WORDS
    assert drawn(shipped, prompt) in {group[0] for group in shipped.phrases} or not prompt.strip()


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_respelling_keeps_a_prompts_shape(shipped, prompt):
    respelled = shipped.respelled(prompt)
    assert respelled == prompt or len(TOKEN.findall(respelled)) == len(TOKEN.findall(prompt.lower()))


def test_the_shipped_index_reads_everyday_prompts(shipped):
    assert len(shipped.phrases) == shipped.vectors.shape[0] > 3000
    assert drawn(shipped, "a bug that makes honey") == "honeybee"
    assert drawn(shipped, "a cop") == "police officer"
    assert drawn(shipped, "two cats") == "cat"
    assert drawn(shipped, "thumbs up with dark skin tone") == "thumbs up, dark skin tone"


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_a_blank_prompt_stays_blank(shipped, prompt):
    assert drawn(shipped, prompt) == prompt  # the unconditional side of guidance


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_drawn_as_a_name_or_left_blank(shipped, prompt):
    names = {group[0] for group in shipped.phrases}
    result = drawn(shipped, prompt)
    assert result == prompt if not prompt.strip() else result in names


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """The shipped model, and the same folder without its concept index."""
    plain = tmp_path_factory.mktemp("no-index") / "emoji"
    shutil.copytree(EMBEDDED_MODEL, plain, ignore=shutil.ignore_patterns(FOLDER))
    return load_generator(embedded_model()), load_generator(embedded_model().model_copy(update={"source": str(plain)}))


def test_the_model_draws_the_name_and_moderation_reads_the_typed_prompt(generators):
    with_index, without = generators
    typed, name = with_index.encode_prompt("a bug that makes honey"), with_index.encode_prompt("honeybee")
    torch.testing.assert_close(typed.tensors["prompt_embeds"], name.tensors["prompt_embeds"])
    np.testing.assert_allclose(typed.sentence, minilm_embedder()(["a bug that makes honey"])[0], atol=1e-4)
    assert float(typed.sentence @ name.sentence) < 0.99
    assert typed.drawn == "honeybee" and name.drawn is None and with_index.encode_prompt("").drawn is None
    as_typed = without.encode_prompt("a bug that makes honey")
    assert not torch.allclose(as_typed.tensors["prompt_embeds"], name.tensors["prompt_embeds"]) and as_typed.drawn is None
    torch.testing.assert_close(with_index.encode_prompt("").tensors["prompt_embeds"],
                               without.encode_prompt("").tensors["prompt_embeds"])


def test_a_name_is_read_once_while_prompts_land_on_it(generators):
    with_index, _ = generators
    reader = with_index.read_prompt
    reader.recent_names.cache_clear()
    calls = []
    forward = with_index.text_forward
    with_index.text_forward = lambda ids, mask: calls.append(ids.shape[1]) or forward(ids, mask)
    try:
        # the typed prompt's, then the name's unless kept; a name typed (moderation checks the drawn name) is kept
        for prompt, forwards in [("a bug that makes honey", 2), ("a bee making honey", 1), ("bees", 1), ("honeybee", 0)]:
            calls.clear()
            with_index.encode_prompt(prompt)
            assert len(calls) == forwards, prompt
        assert reader.recent_names.cache_info().currsize == 1
    finally:
        with_index.text_forward = forward


def test_a_slip_is_read_in_the_same_forward_as_its_respelling(generators):
    with_index, _ = generators
    prompt = "a cute elefant"
    text, respelled = with_index.concepts.reading(prompt)
    assert respelled and text == "a cute elephant"
    with_index.read_prompt.recent_names.cache_clear()
    calls = []
    forward = with_index.text_forward
    with_index.text_forward = lambda ids, mask: calls.append(tuple(ids.shape)) or forward(ids, mask)
    try:
        embedding = with_index.encode_prompt(prompt)
    finally:
        with_index.text_forward = forward
    assert calls[0][0] == 2 and len(calls) == 2  # typed and respelled together, then the name
    name = with_index.concepts.drawn_text(prompt, minilm_embedder())
    torch.testing.assert_close(embedding.tensors["prompt_embeds"], with_index.encode_prompt(name).tensors["prompt_embeds"])
    np.testing.assert_allclose(embedding.sentence, minilm_embedder()([prompt])[0], atol=1e-4)  # moderation: as typed


def test_spelling_reads_a_prompts_first_words_only(shipped, monkeypatch):
    seen = []
    monkeypatch.setattr(Concepts, "respelled", lambda self, text: seen.append(text) or text)
    shipped.ranked("elefant " * 200, minilm_embedder())  # the longest prompt the server takes is 1,000 characters
    assert seen == [" ".join(["elefant"] * READ_WORDS)]  # MiniLM reads 32 tokens: later words never count
