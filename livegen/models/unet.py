"""UNet families: SD-Turbo and SD 1.x/2.x (CLIP), SDXL-Turbo and SDXL (two text encoders).

One denoising loop for the few-step samplers the loader chose: Euler with trailing spacing
(Turbo), LCMScheduler (LCM, LCM-LoRA) and TCDScheduler (Hyper-SD, TCD). LCM models distilled
with a guidance embedding take the guidance as `timestep_cond`; every other model uses
classifier-free guidance only when guidance > 1.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import torch

from livegen.models.base import BatchSpec, PromptEmbedding
from livegen.models.concepts import Concepts
from livegen.models.embedded import PromptReader
from livegen.models.pipeline import DiffusersGenerator

CFG_GUIDANCE = 2.0  # any guidance above 1 turns classifier-free guidance on, which the warm-up must see
MINILM_WIDTH = 384  # all-MiniLM-L6-v2's hidden size: the encoder moderation reads


class StableDiffusionGenerator(DiffusersGenerator):
    real_tokens = False  # conditioned on the prompt's real tokens, repeated (models/embedded.py); set by the loader
    packaged_encoder = False  # its text encoder is MiniLM from its package (embedded.pipeline_components); set by the loader
    concepts: Concepts | None = None  # the folder's concept index (models/concepts.py); set by the loader

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        return (self.pipe.unet.config.in_channels, height // self.vae_scale, width // self.vae_scale)

    @cached_property
    def reads_sentences(self) -> bool:
        encoder = self.pipe.text_encoder
        return type(encoder).__name__ == "BertModel" and encoder.config.hidden_size == MINILM_WIDTH

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        if not self.reads_sentences:
            embeds, _ = self.pipe.encode_prompt(prompt, self.device, 1, False)
            return PromptEmbedding({"prompt_embeds": embeds.to(self.dtype)})
        hidden, sentence, drawn = self.read_prompt(prompt)
        return PromptEmbedding({"prompt_embeds": hidden.to(self.device, self.dtype)}, sentence=sentence, drawn=drawn)

    @cached_property
    def read_prompt(self) -> PromptReader:
        return PromptReader(self)

    def tokenize(self, text: str) -> tuple[torch.Tensor, int]:
        tokenizer = self.pipe.tokenizer
        tokens = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
        return tokens.input_ids.to(self.device), int(tokens.attention_mask.sum())

    def text_forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's last hidden states; onnxruntime's after `trace()` (models/onnx_text.py)."""
        return self.pipe.text_encoder(ids, attention_mask=mask)[0]

    def trace(self) -> None:
        super().trace()
        if self.reads_sentences:
            from livegen.models.onnx_text import OnnxTextEncoder, exported_graph, minilm_graph

            # MiniLM from its package: the graph moderation reads too, one copy in the cache.
            self.text_graph = minilm_graph() if self.packaged_encoder else exported_graph(self.pipe.text_encoder)
            self.text_forward = OnnxTextEncoder(self.text_graph, torch.get_num_threads())  # type: ignore[method-assign]

    @cached_property
    def empty_prompt(self) -> PromptEmbedding:
        """The unconditional side of classifier-free guidance."""
        embedding = self.encode_prompt("")
        if getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
            embedding = PromptEmbedding({k: torch.zeros_like(v) for k, v in embedding.tensors.items()})
        return embedding

    @property
    def guidance_embedding_dim(self) -> int | None:
        return self.pipe.unet.config.time_cond_proj_dim

    def warm_guidances(self) -> list[float]:
        """Classifier-free guidance (above 1, without a guidance embedding) doubles the batch: on and off."""
        default = self.description.default_guidance
        if self.guidance_embedding_dim is not None:
            return [default]
        return [CFG_GUIDANCE if default <= 1.0 else 0.0, default]

    def unet_conditioning(self, stacked: dict[str, torch.Tensor], spec: BatchSpec) -> dict:
        return {"encoder_hidden_states": stacked["prompt_embeds"]}

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
        batch = noise.shape[0]
        timesteps = self.schedule(spec)
        embedded_guidance = self.guidance_embedding_dim is not None
        cfg = spec.guidance > 1.0 and not embedded_guidance
        if cfg:
            prompts = [self.empty_prompt] * batch + prompts
        cond = self.unet_conditioning(PromptEmbedding.stack(prompts), spec)
        if embedded_guidance:
            w = torch.full((batch,), spec.guidance - 1.0)
            cond["timestep_cond"] = self.pipe.get_guidance_scale_embedding(
                w, embedding_dim=self.guidance_embedding_dim
            ).to(self.device, self.dtype)

        if image_latents is None:
            latents = noise * self.scheduler.init_noise_sigma
        else:
            latents = self.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch))
        generators = self.generators(seeds)
        for t in timesteps:
            if should_stop():
                return None
            model_input = torch.cat([latents, latents]) if cfg else latents
            # One layout whatever made the latents (noise, or the image encoder's channels-last output):
            # a trace or a CUDA graph per layout would double the warm-up's captures for no speed
            # (batch 1 and 8 ran as fast either way on the 2-core CPU).
            model_input = self.scheduler.scale_model_input(model_input, t).contiguous(memory_format=torch.channels_last)
            pred = self.denoiser(model_input, t, **cond, return_dict=False)[0]
            if cfg:
                uncond, text = pred.chunk(2)
                pred = uncond + spec.guidance * (text - uncond)
            latents = self.scheduler.step(pred, t, latents, generator=generators, return_dict=False)[0]
        return latents


class StableDiffusionXLGenerator(StableDiffusionGenerator):
    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return PromptEmbedding({"prompt_embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype)})

    def unet_conditioning(self, stacked: dict[str, torch.Tensor], spec: BatchSpec) -> dict:
        # SDXL micro-conditioning: original size, crop (0, 0), target size.
        size = [spec.height, spec.width]
        time_ids = torch.tensor([size + [0, 0] + size], device=self.device, dtype=self.dtype)
        batch = stacked["pooled"].shape[0]
        return {
            "encoder_hidden_states": stacked["prompt_embeds"],
            "added_cond_kwargs": {"text_embeds": stacked["pooled"], "time_ids": time_ids.repeat(batch, 1)},
        }
