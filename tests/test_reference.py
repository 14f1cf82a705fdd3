"""The real-size reference architectures keep the published parameter counts (built on the meta device).

GPU benchmarks label their figures "SD-Turbo / SDXL-Turbo architecture, random weights": that is
only honest while these configs match the real models, so a drifting config must fail here.
"""

from __future__ import annotations

import pytest
import torch

from livegen.models import reference


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("architecture", "unet", "text_encoders", "vae"),
    [
        # SD 2.1 UNet; OpenCLIP ViT-H text tower minus its last layer; SD VAE.
        ("sd-turbo", 865_910_724, [("CLIPTextModel", 340_387_840)], 83_653_863),
        # SDXL UNet; CLIP ViT-L and OpenCLIP ViT-bigG with its projection; SDXL VAE (same shape as SD's).
        ("sdxl-turbo", 2_567_463_684,
         [("CLIPTextModel", 123_060_480), ("CLIPTextModelWithProjection", 694_659_840)], 83_653_863),
        # SD 1.5 UNet (859,520,964) plus LCM's guidance projection (256 x 320); CLIP ViT-L; SD VAE.
        ("lcm-sd15", 859_602_884, [("CLIPTextModel", 123_060_480)], 83_653_863),
        # FLUX.1-dev's 11,901,408,320 less the guidance embedder schnell has not (10,229,760);
        # CLIP ViT-L and T5-v1.1-XXL's encoder; FLUX's 16-channel VAE.
        ("flux-schnell", 11_891_178_560, [("CLIPTextModel", 123_060_480), ("T5EncoderModel", 4_762_310_656)],
         83_819_683),
    ],
)
def test_architectures_have_the_published_parameter_counts(architecture, unet, text_encoders, vae):
    with torch.device("meta"):
        assert count(reference.unet(architecture)) == unet
        encoders = reference.text_encoders(architecture)
        assert [(type(e).__name__, count(e)) for e in encoders] == text_encoders
        assert count(reference.vae(architecture)) == vae
        taesd = reference.taesd()
    assert (count(taesd.encoder), count(taesd.decoder)) == (1_222_532, 1_222_531)


def test_text_encoders_fit_the_character_tokenizer_and_the_77_token_sequence():
    tokenizer = reference.tokenizer()
    ids = tokenizer("a red fox in the snow", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77
    with torch.device("meta"):
        for architecture in reference.ARCHITECTURES:
            for encoder in reference.text_encoders(architecture):
                config = encoder.config
                if config.model_type == "t5":  # relative positions: any length; FLUX asks for 256
                    assert max(ids) < config.vocab_size == 32128
                else:
                    assert config.max_position_embeddings == 77
                    assert max(ids) < config.vocab_size == 49408
                assert config.eos_token_id == tokenizer.eos_token_id


def test_sdxl_added_conditioning_matches_its_pooled_text_and_time_ids():
    unet = reference.SDXL_TURBO_UNET
    pooled = reference.SDXL_TEXT_ENCODER_2["projection_dim"]
    assert unet["projection_class_embeddings_input_dim"] == pooled + 6 * unet["addition_time_embed_dim"]
    assert unet["cross_attention_dim"] == (reference.SDXL_TEXT_ENCODER["hidden_size"]
                                           + reference.SDXL_TEXT_ENCODER_2["hidden_size"])
    assert reference.SD_TURBO_UNET["cross_attention_dim"] == reference.SD_TURBO_TEXT_ENCODER["hidden_size"]


def test_flux_has_no_tiny_decoder(tmp_path):
    with pytest.raises(ValueError, match="16"):
        reference.build_reference_pipeline(tmp_path / "flux", "flux-schnell", tiny_vae=True)
    assert not (tmp_path / "flux").exists()


def test_unknown_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sd-turbo"):
        reference.build_reference_pipeline(tmp_path / "x", "sd3")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()
