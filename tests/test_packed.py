"""A start that finds the embedded model's pack in the cache folder serves it without diffusers or
transformers (models/packed.py), with the frames and sentence vectors the diffusers-loaded model gives."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livegen import cache
from livegen.config import ModelConfig, embedded_model
from livegen.models import packed
from livegen.models.base import BatchSpec
from livegen.models.embedded import EMBEDDED_MODEL
from livegen.models.loader import load_generator
from livegen.models.pipeline import DiffusersGenerator
from livegen.protocol import MAX_SEED, MAX_STEPS

PROMPTS = ["a smiling cat", "x", "a red fox in the snow at night holding a lantern, seen from far away in the woods"]


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory, signing_keys):
    folder = tmp_path_factory.mktemp("pack-cache")
    previous = os.environ.get("LIVEGEN_CACHE_DIR")
    os.environ["LIVEGEN_CACHE_DIR"] = str(folder)
    yield folder
    os.environ["LIVEGEN_CACHE_DIR"] = previous  # conftest's, for the session


@pytest.fixture(scope="module")
def pair(cache_folder):
    """The shipped model loaded through diffusers, and from the pack that load kept."""
    config = embedded_model()
    generator = load_generator(config)
    assert packed.load_pack(config) is None
    packed.keep_pack(generator, config)
    from_pack = packed.load_pack(config)
    assert isinstance(from_pack, packed.PackedGenerator)
    return generator, from_pack


def run(generator, spec: BatchSpec, seeds: list[int], image: np.ndarray | None):
    prompts = [generator.encode_prompt(PROMPTS[i % len(PROMPTS)]) for i in range(len(seeds))]
    noise = torch.cat([generator.make_noise(spec.width, spec.height, seed) for seed in seeds])
    latents = generator.encode_images(np.stack([image] * len(seeds))) if image is not None else None
    denoised = generator.denoise(spec, prompts, noise, latents, seeds, lambda: False)
    return denoised, generator.decode(denoised)


@pytest.mark.parametrize(("steps", "strength", "batch"), [(1, None, 1), (2, None, 3), (4, None, 2), (1, 0.5, 1),
                                                          (2, 0.6, 3), (1, 0.01, 1)])
def test_the_pack_draws_what_the_diffusers_model_draws(pair, steps, strength, batch):
    generator, from_pack = pair
    spec = BatchSpec(64, 64, steps, 3.0, strength)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8) if strength else None
    latents, pictures = run(generator, spec, list(range(7, 7 + batch)), image)
    pack_latents, pack_pictures = run(from_pack, spec, list(range(7, 7 + batch)), image)
    torch.testing.assert_close(pack_latents, latents, atol=2e-4, rtol=1e-4)
    assert np.abs(pack_pictures.astype(int) - pictures.astype(int)).max() <= 1


def test_the_kept_traces_are_frozen_graphs(pair):
    """Weights as constants of one graph: no submodules or parameters for a start to rebuild."""
    _, from_pack = pair
    for module in [*from_pack.unets.values(), *from_pack.encoders.values(), *from_pack.decoders.values()]:
        assert not list(module.children()) and not list(module.parameters())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(1, MAX_STEPS), strength=st.none() | st.floats(0.001, 1.0), guidance=st.floats(0.0, 30.0),
       seeds=st.lists(st.integers(0, MAX_SEED), min_size=1, max_size=3))
def test_any_request_the_protocol_takes_gives_the_same_picture(pair, steps, strength, guidance, seeds):
    generator, from_pack = pair
    spec = BatchSpec(64, 64, steps, guidance, strength)
    image = np.full((64, 64, 3), 90, np.uint8) if strength else None
    latents, pictures = run(generator, spec, seeds, image)
    pack_latents, pack_pictures = run(from_pack, spec, seeds, image)
    torch.testing.assert_close(pack_latents, latents, atol=5e-4, rtol=1e-4)
    assert np.abs(pack_pictures.astype(int) - pictures.astype(int)).max() <= 1


def test_the_pack_reads_prompts_as_the_diffusers_model_does(pair):
    generator, from_pack = pair
    assert from_pack.reads_sentences and from_pack.description == generator.description
    for prompt in PROMPTS:
        ours, theirs = from_pack.encode_prompt(prompt), generator.encode_prompt(prompt)
        torch.testing.assert_close(ours.tensors["prompt_embeds"], theirs.tensors["prompt_embeds"])
        np.testing.assert_allclose(ours.sentence, theirs.sentence, atol=1e-6)


def test_the_pack_keeps_every_concept_names_states_as_a_read_alone_gives(pair):
    generator, from_pack = pair
    kept = from_pack.read_prompt.kept_names
    concepts = generator.concepts
    assert kept is not None and kept.names == concepts.names_in_order() and len(kept.names) == len(concepts.phrases)
    for name in [kept.names[0], "honeybee", kept.names[-1], max(kept.names, key=len)]:
        _, length, states = generator.read_prompt.read(name)
        assert kept.lengths[kept.names.index(name)] == length
        torch.testing.assert_close(kept.states(name), states, atol=1e-5, rtol=1e-5)
    assert kept.states("not a concept name") is None


def test_a_prompt_drawn_as_a_name_not_read_before_costs_one_forward_from_the_pack(pair):
    _, from_pack = pair
    calls = []
    forward = from_pack.text_forward
    from_pack.text_forward = lambda ids, mask: calls.append(ids.shape) or forward(ids, mask)
    try:
        for prompt in ["a bug that makes honey", "a small red fox", "honeybee"]:
            calls.clear()
            embedding = from_pack.encode_prompt(prompt)
            assert len(calls) == (0 if embedding.drawn is None and prompt in from_pack.concepts.names else 1), prompt
    finally:
        from_pack.text_forward = forward
    assert from_pack.read_prompt.recent_names.cache_info().currsize == 0


def test_the_tables_hold_the_schedulers_own_schedules(pair):
    generator, _ = pair
    tables, dtype = packed.sampler_tables(generator.scheduler, generator.longest_schedule)
    assert len(tables) == generator.longest_schedule == 20  # LCM: the steps it was distilled for
    for total in (1, 4, 20):
        generator.scheduler.set_timesteps(total)
        assert [step[0] for step in tables[total - 1]] == generator.scheduler.timesteps.tolist()
    assert dtype == str(generator.scheduler.timesteps.dtype).removeprefix("torch.")


def test_a_scheduler_whose_step_is_not_linear_is_not_packed(pair):
    generator, _ = pair
    scheduler = generator.scheduler.__class__.from_config({**generator.scheduler.config, "clip_sample": True,
                                                           "clip_sample_range": 0.1})
    with pytest.raises(packed.NotPackable):
        packed.sampler_tables(scheduler, 2)


def test_a_change_to_the_models_files_settings_or_code_names_another_pack(pair, tmp_path, monkeypatch):
    folder = tmp_path / "emoji"
    shutil.copytree(EMBEDDED_MODEL, folder)
    config = ModelConfig(source=str(folder), sizes=[(64, 64)], guidance=3.0)
    name = packed.pack_name(config)
    assert packed.pack_name(config.model_copy(update={"sizes": [(64, 64), (128, 128)]})) != name
    assert packed.pack_name(config.model_copy(update={"guidance": 2.0})) != name
    unet = folder / "unet" / "config.json"
    unet.write_text(json.dumps({**json.loads(unet.read_text()), "_note": "changed"}))
    assert packed.pack_name(config) != name
    code = tmp_path / "packed.py"  # the code that makes the pack, edited at the same version
    monkeypatch.setattr(packed, "__file__", str(code))
    for module in packed.CODE:
        (tmp_path / module).write_text("# one version")
    name = packed.pack_name(config)
    code.write_text("# another version, longer")
    assert packed.pack_name(config) != name


def test_a_damaged_pack_loads_through_diffusers_and_is_kept_again(pair, cache_folder, caplog):
    generator, _ = pair
    config = embedded_model()
    name = packed.pack_name(config)
    (cache_folder / name / "unet-64x64.pt").write_bytes(b"not a trace")
    with caplog.at_level(logging.WARNING):
        assert packed.load_pack(config) is None
    assert "could not be read" in caplog.text and not packed.has_pack(config)
    packed.keep_pack(generator, config)
    assert isinstance(packed.load_pack(config), packed.PackedGenerator)


def test_models_the_pack_cannot_hold_are_loaded_as_before(pair, tiny_models):
    generator, _ = pair
    assert packed.packable(generator)
    tiny = load_generator(ModelConfig(source=str(tiny_models()), sizes=[(64, 64)]))
    assert isinstance(tiny, DiffusersGenerator) and not packed.packable(tiny)  # CLIP, not MiniLM


STARTS = textwrap.dedent("""
    import asyncio, sys
    from livegen.config import Settings
    from livegen.engine import Engine

    async def main():
        engine = Engine(Settings())
        await engine.start()
        assert engine.ready and engine.speech is not None
        print(engine.acceleration()["emoji"].get("kept", False),
              [name for name in ("diffusers", "transformers") if name in sys.modules])
        await engine.stop()

    asyncio.run(main())
""")


def test_a_start_that_finds_the_pack_imports_neither_diffusers_nor_transformers(tmp_path):
    """Two starts of a server with the embedded model and speech, sharing a cache folder."""
    env = {**os.environ, "LIVEGEN_CACHE_DIR": str(tmp_path)}
    stale = tmp_path / "onnx-optimized" / "left-by-an-upgrade.onnx"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    first, second = (subprocess.run([sys.executable, "-c", STARTS], env=env, capture_output=True, text=True,
                                    timeout=300, check=True).stdout.splitlines()[-1] for _ in range(2))
    assert first == "False ['diffusers', 'transformers']"
    assert second == "True []"
    assert any((tmp_path / "packs").iterdir())
    assert not stale.exists()  # a start prunes what no start used for cache.KEPT_DAYS
    assert {path.name for path in tmp_path.iterdir()} == set(cache.ENTRIES)  # what prune may remove: all a start keeps
    [text_graph] = (tmp_path / "onnx").iterdir()  # the image model's MiniLM is moderation's: one copy
    assert text_graph.name.startswith("minilm-")
