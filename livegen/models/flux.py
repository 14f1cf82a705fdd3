"""FLUX.1 family (schnell and dev): a flow-matching transformer on packed 2x2 latent patches.

schnell is step-distilled and ignores guidance; dev takes guidance as an embedding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from livegen.models.base import BatchSpec, PromptEmbedding
from livegen.models.pipeline import DiffusersGenerator


class FluxGenerator(DiffusersGenerator):
    max_sequence_length = 256  # schnell's limit; dev allows 512

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        # Latent sides must be even so that 2x2 patches tile them.
        patch = self.vae_scale * 2
        channels = self.pipe.transformer.config.in_channels // 4
        return (channels, 2 * (height // patch), 2 * (width // patch))

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        self.text_ids = text_ids  # the same for every prompt
        return PromptEmbedding({"prompt_embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype)})

    def set_timesteps(self, total: int, spec: BatchSpec) -> None:
        _, height, width = self.latent_shape(spec.width, spec.height)
        config = self.scheduler.config
        mu = calculate_shift(
            (height // 2) * (width // 2),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / total, total)
        self.scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=self.device)

    @torch.inference_mode()
    def denoise(
        self,
        spec: BatchSpec,
        prompts: list[PromptEmbedding],
        noise: torch.Tensor,
        image_latents: torch.Tensor | None,
        seeds: list[int],
        should_stop: Callable[[], bool],
    ) -> torch.Tensor | None:
        batch, channels, height, width = noise.shape
        pipe = self.pipe
        timesteps = self.schedule(spec)
        stacked = PromptEmbedding.stack(prompts)
        latents = pipe._pack_latents(noise, batch, channels, height, width)
        if image_latents is not None:
            packed_image = pipe._pack_latents(image_latents, batch, channels, height, width)
            latents = self.scheduler.scale_noise(packed_image, timesteps[:1].repeat(batch), latents)
        image_ids = pipe._prepare_latent_image_ids(batch, height // 2, width // 2, self.device, self.dtype)
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), spec.guidance, device=self.device, dtype=torch.float32)
        for t in timesteps:
            if should_stop():
                return None
            pred = self.denoiser(
                hidden_states=latents,
                timestep=(t.expand(batch) / 1000).to(latents.dtype),
                guidance=guidance,
                pooled_projections=stacked["pooled"],
                encoder_hidden_states=stacked["prompt_embeds"],
                txt_ids=self.text_ids,
                img_ids=image_ids,
                return_dict=False,
            )[0]
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
        return pipe._unpack_latents(latents, spec.height, spec.width, self.vae_scale)
