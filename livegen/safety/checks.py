"""Output checks: a stage that looks at each batch of decoded frames before any is encoded or sent.

A checker is any callable taking the batch, (B, H, W, 3) uint8 on the model's device, and
returning one entry per frame: None for a frame that may go out, or the category it was flagged
for. `--output-checker` names one of:

- a folder or a repo id in the local Hugging Face cache holding the Stable Diffusion safety
  checker (`StableDiffusionSafetyChecker`, e.g. CompVis/stable-diffusion-safety-checker): it
  runs on the frames' device, batched, with CLIP's preprocessing done there too;
- `package.module:name`, a class or function that returns a checker when called with no
  arguments: how a deployment plugs in its own classifier (and how the tests plug in theirs).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from livegen.models.base import ModelError

OutputChecker = Callable[[torch.Tensor], list[str | None]]
_IMPORT_SPEC = re.compile(r"^[\w.]+:[\w.]+$")
# CLIP's preprocessing, used when the checker's folder has no preprocessor_config.json.
CLIP_SIZE, CLIP_MEAN, CLIP_STD = 224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class SafetyCheckerModel:
    """The Stable Diffusion safety checker: CLIP image embeddings against its concept embeddings."""

    def __init__(self, source: str, device: torch.device, dtype: torch.dtype = torch.float32):
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from huggingface_hub import snapshot_download

        try:
            folder = Path(source) if Path(source).is_dir() else Path(snapshot_download(source, local_files_only=True))
            self.model = StableDiffusionSafetyChecker.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        except Exception as exc:
            raise ModelError(f"no Stable Diffusion safety checker at {source!r} ({type(exc).__name__}: {exc}); "
                             "give a local folder, or a repo id already in the local Hugging Face cache") from exc
        self.model.to(device).eval()
        self.device, self.dtype = device, dtype
        config_file = folder / "preprocessor_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        size = config.get("crop_size", CLIP_SIZE)
        self.size = size.get("height", CLIP_SIZE) if isinstance(size, dict) else int(size)
        self.mean = torch.tensor(config.get("image_mean", CLIP_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(config.get("image_std", CLIP_STD), device=device).view(1, 3, 1, 1)

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's resize (shorter side), centre crop and normalisation, on the frames' device."""
        pixels = images.permute(0, 3, 1, 2).float() / 255.0
        height, width = pixels.shape[-2:]
        scale = self.size / min(height, width)
        resized = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
        pixels = F.interpolate(pixels, size=resized, mode="bicubic", antialias=True, align_corners=False)
        top, left = (resized[0] - self.size) // 2, (resized[1] - self.size) // 2
        pixels = pixels[..., top:top + self.size, left:left + self.size]
        return ((pixels - self.mean) / self.std).to(self.dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> list[str | None]:
        clip_input = self._preprocess(images.to(self.device))
        _, flagged = self.model.forward_onnx(clip_input, torch.zeros(len(images), 1, device=self.device))
        return ["nsfw" if f else None for f in flagged.tolist()]


def load_checker(spec: str, device: torch.device, dtype: torch.dtype = torch.float32) -> OutputChecker:
    """The checker `spec` names (see the module's docstring); a ModelError says why it cannot load."""
    if _IMPORT_SPEC.match(spec) and not Path(spec).exists():
        module_name, _, attribute = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"cannot import the output checker {spec!r}: {exc}") from exc
        return factory()
    return SafetyCheckerModel(spec, device, dtype)
