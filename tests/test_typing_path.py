"""A new prompt is read once for both the denoiser and moderation: the embedded model's MiniLM gives
the denoiser's conditioning and moderation's sentence vector (the real tokens alone), through
onnxruntime on the CPU (issue 21). The shipped model reads the real tokens for both (one short
forward); a model read as plain diffusers reads it (padded) needs a second, 32-token forward."""

from __future__ import annotations

import itertools
import shutil
from functools import lru_cache

import numpy as np
import pytest
import torch

from livegen.config import ModelConfig, SafetyConfig
from livegen.models.concepts import FOLDER as CONCEPTS
from livegen.models import onnx_text
from livegen.models.embedded import CONDITIONING_FILE, EMBEDDED_MODEL, real_token_embeds
from livegen.models.loader import load_generator
from livegen.protocol import Generate
from livegen.safety.moderation import minilm_embedder
from livegen.safety.stages import SafetyStages

PROMPTS = ["a smiling cat", "x", "a red fox in the snow at night holding a lantern, seen from far away in the woods"]


def shipped_without(tmp_path_factory, *parts: str):
    """The shipped model from a copy of its folder without `parts`."""
    folder = tmp_path_factory.mktemp("emoji") / "emoji"
    shutil.copytree(EMBEDDED_MODEL, folder, ignore=shutil.ignore_patterns(*parts))
    return load_generator(ModelConfig(source=str(folder), sizes=[(64, 64)]))


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """The shipped weights, trained to read their prompts' real tokens (livegen.json says so), reading
    the prompt as typed: without the concept index, which draws a concept's name instead
    (tests/test_concepts.py counts its forwards)."""
    return shipped_without(tmp_path_factory, CONCEPTS)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """The same weights without the marker: prompts read as plain diffusers reads them."""
    return shipped_without(tmp_path_factory, CONCEPTS, CONDITIONING_FILE)


def test_the_padded_reading_is_the_pipelines_and_the_sentence_vector_moderations(padded):
    assert padded.reads_sentences and not padded.real_tokens
    assert not padded.pipe.text_encoder.training  # exporting it for onnxruntime must not turn dropout on
    moderation_minilm = minilm_embedder()
    for prompt in PROMPTS:
        embedding = padded.encode_prompt(prompt)
        with torch.inference_mode():
            pipeline, _ = padded.pipe.encode_prompt(prompt, padded.device, 1, False)
        torch.testing.assert_close(embedding.tensors["prompt_embeds"], pipeline.to(padded.dtype))
        np.testing.assert_allclose(embedding.sentence, moderation_minilm([prompt])[0], atol=1e-5)


@pytest.mark.parametrize("reading", ["real tokens", "padded"])
def test_a_new_prompt_moderated_then_generated_runs_the_encoder_once(reading, generator, padded, signing_keys):
    generator = generator if reading == "real tokens" else padded
    calls = []
    forward = generator.text_forward
    generator.text_forward = lambda ids, mask: calls.append(ids.shape) or forward(ids, mask)
    try:
        encode = lru_cache(maxsize=16)(generator.encode_prompt)
        stages = SafetyStages(SafetyConfig(keys=signing_keys), generator, itertools.count(), encode)
        calls.clear()  # the policy's descriptions were read at start
        assert stages.moderate(Generate(id="1", prompt="a blue whale in a teacup")) is None
        misses = encode.cache_info().misses
        encode("a blue whale in a teacup")  # what the runner's generation asks next: moderation made it
        assert encode.cache_info().misses == misses
        real = len(generator.pipe.tokenizer("a blue whale in a teacup").input_ids)
        padded_forward = [torch.Size([1, generator.pipe.tokenizer.model_max_length])] if reading == "padded" else []
        assert calls == [torch.Size([1, real]), *padded_forward]
        blocked = stages.moderate(Generate(id="2", prompt="a mutilated body covered in blood"))
        assert blocked is not None and blocked.stage == "prompt"  # the shared vector still moderates
    finally:
        generator.text_forward = forward


def test_the_policys_descriptions_are_read_in_one_forward_with_the_vectors_each_gives_alone(generator, signing_keys):
    calls = []
    forward = generator.text_forward
    generator.text_forward = lambda ids, mask: calls.append(ids.shape) or forward(ids, mask)
    try:
        stages = SafetyStages(SafetyConfig(keys=signing_keys), generator, itertools.count(), generator.encode_prompt)
    finally:
        generator.text_forward = forward
    descriptions = [d for category in stages.moderator.policy.categories for d in category.descriptions]
    assert len(descriptions) > 1 and [shape[0] for shape in calls] == [len(descriptions)]
    alone = np.stack([generator.encode_prompt(description).sentence for description in descriptions])
    np.testing.assert_allclose(stages.moderator._vectors, alone, atol=1e-6)


def test_the_exported_encoder_is_kept_and_a_damaged_copy_replaced(generator, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEGEN_CACHE_DIR", str(tmp_path))
    exports = []
    export = onnx_text._export
    monkeypatch.setattr(onnx_text, "_export", lambda encoder: exports.append(1) or export(encoder))
    ids = torch.randint(1000, 5000, (1, 12))
    first = onnx_text.OnnxTextEncoder(onnx_text.exported_graph(generator.pipe.text_encoder), 1)(ids, torch.ones_like(ids))
    assert len(exports) == 1
    onnx_text.OnnxTextEncoder(onnx_text.exported_graph(generator.pipe.text_encoder), 1)  # the same weights: read from the cache
    assert len(exports) == 1
    [kept] = (tmp_path / "onnx").iterdir()
    kept.write_bytes(b"not an onnx graph")
    onnx_text.OnnxTextEncoder(onnx_text.exported_graph(generator.pipe.text_encoder), 1)  # its optimized copy alone is read
    assert len(exports) == 1
    for damaged in [kept, *(tmp_path / "onnx-optimized").iterdir()]:
        damaged.write_bytes(b"not an onnx graph")
    again = onnx_text.OnnxTextEncoder(onnx_text.exported_graph(generator.pipe.text_encoder), 1)(ids, torch.ones_like(ids))
    assert len(exports) == 2 and kept.read_bytes() != b"not an onnx graph"
    torch.testing.assert_close(again, first)


def test_the_shipped_model_is_conditioned_by_the_one_short_forward(generator):
    assert generator.real_tokens
    calls = []
    forward = generator.text_forward
    generator.text_forward = lambda ids, mask: calls.append(ids.shape) or forward(ids, mask)
    for prompt in PROMPTS:
        calls.clear()
        embedding = generator.encode_prompt(prompt)
        assert calls == [torch.Size([1, len(generator.pipe.tokenizer(prompt, truncation=True).input_ids)])]
        expected = real_token_embeds(generator.pipe.tokenizer, generator.pipe.text_encoder, [prompt])
        torch.testing.assert_close(embedding.tensors["prompt_embeds"], expected.to(generator.dtype), atol=2e-5, rtol=0)
        np.testing.assert_allclose(embedding.sentence, minilm_embedder()([prompt])[0], atol=1e-5)
