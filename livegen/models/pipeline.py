"""What every diffusers-backed generator shares: noise, the schedule, and the VAE at both ends."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from livegen.models.base import BatchSpec, ImageGenerator, ModelDescription

# Image-to-image stretches the schedule to steps/strength, to 50 steps at most (LCM and TCD: fewer).
MAX_SCHEDULE = 50


def vae_scale_factor(vae: Any) -> int:
    config = vae.config
    if "upsampling_scaling_factor" in config:  # AutoencoderTiny
        return config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
    return 2 ** (len(config.block_out_channels) - 1)


def schedule_length(spec: BatchSpec, longest: int) -> int:
    """The schedule `spec` runs on: image-to-image places its `steps` on one of steps/strength, at most `longest`."""
    if spec.strength is None:
        return spec.steps
    return min(longest, max(spec.steps, round(spec.steps / spec.strength)))


class DiffusersGenerator(ImageGenerator):
    """A diffusers pipeline's components driven stage by stage; subclasses add the denoiser loop."""

    def __init__(self, pipe: Any, description: ModelDescription, device: torch.device, dtype: torch.dtype):
        self.pipe = pipe
        self.description = description
        self.device = device
        self.dtype = dtype
        self.scheduler = pipe.scheduler
        self.vae = pipe.vae
        self.vae_scale = vae_scale_factor(pipe.vae)
        self.denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
        # On the CPU, the threads it computes with: read on the thread that loads it, which serves it
        # (a Ray replica gets as many as the CPUs it reserves), not on whichever thread asks /readyz.
        self.threads = torch.get_num_threads()
        # NHWC is the layout oneDNN's and cuDNN's convolutions prefer: on the 2-core CPU the embedded
        # model's denoise went from 21.5 to 19-20 ms and its decode from 7.5 to 5.7 ms.
        self.denoiser.to(memory_format=torch.channels_last)
        self.vae.to(memory_format=torch.channels_last)
        self.acceleration = "eager"

    def trace(self) -> None:
        """On a CPU: run the UNet by TorchScript traces (models/traced.py); FLUX stays eager."""
        if hasattr(self.pipe, "unet"):
            from livegen.models.traced import TracedUNet

            self.denoiser = TracedUNet(self.denoiser)
            self.acceleration = "TorchScript traces"

    def compile(self) -> None:
        """torch.compile the denoiser and the decoder; the engine's warm-up pays the compile time."""
        self.denoiser = torch.compile(self.denoiser, mode="max-autotune-no-cudagraphs")
        self.vae.decoder = torch.compile(self.vae.decoder)
        self.acceleration = "torch.compile"

    def capture_graphs(self) -> None:
        """On CUDA: the denoiser and the decoder replayed as CUDA graphs, captured by the warm-up."""
        from livegen.models.cuda_graphs import GraphedModule, new_pool

        pool = new_pool()
        self.denoiser = GraphedModule(self.denoiser, pool, f"{self.name} denoiser")
        self.vae.decoder = GraphedModule(self.vae.decoder, pool, f"{self.name} decoder")
        self.acceleration = "CUDA graphs"

    def warmed(self) -> None:
        for module in (self.denoiser, self.vae.decoder):
            if hasattr(module, "capturing"):
                module.capturing = False

    def describe_acceleration(self) -> dict:
        graphs = {part: module.describe() for part, module in (("denoiser", self.denoiser), ("decoder", self.vae.decoder))
                  if hasattr(module, "describe")}
        threads = {"threads": self.threads} if self.device.type == "cpu" else {}
        return {"mode": self.acceleration, **graphs, **threads}

    # ------------------------------------------------------------------ schedule

    def set_timesteps(self, total: int, spec: BatchSpec) -> None:
        self.scheduler.set_timesteps(total, device=self.device)

    @property
    def longest_schedule(self) -> int:
        """LCM's and TCD's schedulers take at most the steps they were distilled for."""
        return min(MAX_SCHEDULE, self.scheduler.config.get("original_inference_steps") or MAX_SCHEDULE)

    def schedule(self, spec: BatchSpec) -> torch.Tensor:
        """The timesteps to run: `steps` of them, starting at the noise level `strength` asks for.

        Image-to-image keeps `steps` as the number of denoiser evaluations (the real-time budget)
        and places them on a schedule of steps/strength, instead of cutting the schedule short.
        """
        total = schedule_length(spec, self.longest_schedule)
        self.set_timesteps(total, spec)
        begin = (total - spec.steps) * self.scheduler.order
        self.scheduler.set_begin_index(begin)
        return self.scheduler.timesteps[begin:]

    # ------------------------------------------------------------------ VAE

    def _vae_shift(self) -> float:
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        return self.encode_pixels(torch.from_numpy(images).to(self.device))

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 on the device -> latents."""
        pixels = (pixels.permute(0, 3, 1, 2).to(self.vae.dtype) / 127.5 - 1.0).contiguous()
        encoded = self.vae.encode(pixels)
        # The mean, not a sample: a still camera frame should give a still latent.
        latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
        return ((latents - self._vae_shift()) * self.vae.config.scaling_factor).to(self.dtype)

    @torch.inference_mode()
    def decode_on_device(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents / self.vae.config.scaling_factor + self._vae_shift()
        images = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1)
