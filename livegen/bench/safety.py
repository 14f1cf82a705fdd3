"""`livegen bench safety`: what each safety stage costs per frame, and how well the watermark survives.

- The whole path: one session's warm frames (in-process engine, fixed prompt) with every safety
  stage on (moderation, watermark; no output checker is configured by default) and with them off,
  on one engine, in alternating blocks so that drift hits both alike.
- Each stage alone: moderation of a new prompt (a MiniLM forward) and of a cached one; the
  watermark at the served size (batch 1 and 8) and at 512x512, beside invisible-watermark's own
  encoder; signing an exported frame's Content Credentials; and, for scale, the Stable Diffusion
  safety checker's architecture (CLIP ViT-L/14, random weights: speed does not depend on them).
- Robustness: watermark bit accuracy after JPEG quality 75, a resize to half size and back, and a
  10% crop, on the model's own frames (64x64), and on the same frames upscaled to 512x512 for
  the DWT-DCT scheme and invisible-watermark's encoder.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import Progress

from livegen.bench.report import Series, header, machine_line, save
from livegen.bench.warm import PROMPT, engine_frames
from livegen.config import ModelConfig, Settings
from livegen.engine import Engine
from livegen.engine.images import encode_frame
from livegen.models.base import BatchSpec
from livegen.models.loader import load_generator
from livegen.safety import watermark
from livegen.safety.moderation import Moderator, Policy, minilm_embedder
from livegen.safety.provenance import Provenance, init_keys

BLOCKS = 6  # alternating blocks of frames, safety on and off
ROBUSTNESS_PROMPTS = ["a kitty", "a red car", "a face with heart eyes", "a slice of pizza", "a rocket",
                      "the flag of Japan", "a thumbs up with dark skin", "a snowman"]


def timed(function, repeats: int, name: str) -> Series:
    function()  # warm
    series = Series(name)
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        series.ms.append((time.perf_counter() - started) * 1000)
    return series


async def whole_path(config: ModelConfig, frames: int) -> dict[str, Series | list[dict]]:
    """Warm frames with safety on and off, alternating blocks on one engine (the stages are
    switched off between blocks, so both arms share the process, threads and caches): with the
    prompt fixed (a slider) and with a new prompt every frame (typing), and the frames' timings."""
    with tempfile.TemporaryDirectory() as keys:
        settings = Settings(models=[config], speech=None)
        settings.safety = settings.safety.model_copy(update={"keys": Path(keys)})
        engine = Engine(settings)
        await engine.start()
        stages = engine.runners[config.display_name].safety
        assert stages is not None
        enabled = (stages.moderator, stages.watermarker)
        arms = ("on", "off", "on, new prompts", "off, new prompts")
        results: dict = {arm: Series(f"safety {arm}") for arm in arms}
        results["timings"] = []
        prompts = iter(range(10**9))
        try:
            for _ in range(BLOCKS):
                for arm in arms:
                    stages.moderator, stages.watermarker = enabled if arm.startswith("on") else (None, None)
                    for _ in range(max(1, frames // BLOCKS)):
                        prompt = f"{PROMPT} number {next(prompts)}" if "new" in arm else PROMPT
                        series, timings = await engine_frames(engine, 1, prompt, arm)
                        results[arm].ms.extend(series.ms)
                        if arm == "on":
                            results["timings"].extend(timings)
        finally:
            await engine.stop()
    return results


def frames_of(engine_config: ModelConfig) -> list[np.ndarray]:
    """The model's own frames (unmarked) for the robustness table."""
    generator = load_generator(engine_config)
    width, height = engine_config.sizes[0]
    frames = []
    for seed, prompt in enumerate(ROBUSTNESS_PROMPTS):
        spec = BatchSpec(width, height, 1, engine_config.guidance or generator.description.default_guidance, None)
        latents = generator.denoise(spec, [generator.encode_prompt(prompt)], generator.make_noise(width, height, seed),
                                    None, [seed], lambda: False)
        frames.append(generator.decode(latents)[0])
    return frames


def stage_costs(frames: list[np.ndarray], repeats: int, checker: bool) -> list[dict]:
    moderator = Moderator(Policy.load(), minilm_embedder())
    fresh = iter(range(10**9))
    marker = watermark.Watermarker("bench")
    small = torch.from_numpy(np.stack(frames[:1]))
    batch = torch.from_numpy(np.stack((frames * 8)[:8]))
    large_image = np.asarray(Image.fromarray(frames[0]).resize((512, 512), Image.Resampling.BICUBIC))
    large = torch.from_numpy(large_image[None].copy())
    rows = [
        timed(lambda: moderator.check(f"a new prompt number {next(fresh)}"), repeats, "moderation, new prompt"),
        timed(lambda: moderator.check("a smiling cat"), repeats, "moderation, cached prompt"),
        timed(lambda: marker.embed(small, [1]), repeats, f"watermark, {small.shape[2]}x{small.shape[1]}, batch 1"),
        timed(lambda: marker.embed(batch, list(range(8))), repeats,
              f"watermark, {small.shape[2]}x{small.shape[1]}, batch 8 (whole batch)"),
        timed(lambda: marker.embed(large, [1]), repeats, "watermark, 512x512"),
        timed(lambda: _imwatermark(large_image), max(3, repeats // 5), "invisible-watermark's own encoder, 512x512"),
    ]
    with tempfile.TemporaryDirectory() as keys:
        signer = Provenance(init_keys(Path(keys)))
        for image in (frames[0], large_image):
            data = encode_frame(image, "jpeg", 85)
            rows.append(timed(lambda data=data: signer.sign(data, "image/jpeg", {"model": "bench"}), repeats,
                              f"Content Credentials, sign a {image.shape[1]}x{image.shape[0]} JPEG"))
    if checker:
        rows.append(_safety_checker_cost(small, 3))
    return [{"stage": s.name, **s.summary()} for s in rows]


def _imwatermark(image: np.ndarray) -> None:
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", [1, 0] * (watermark.PAYLOAD_BITS // 2))
    encoder.encode(np.ascontiguousarray(image[..., ::-1]), "dwtDct")


def _safety_checker_cost(images: torch.Tensor, repeats: int) -> Series:
    """The Stable Diffusion safety checker's architecture (CLIP ViT-L/14), random weights."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    from livegen.safety.checks import SafetyCheckerModel

    config = CLIPConfig(vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                           num_hidden_layers=24, patch_size=14, image_size=224),
                        projection_dim=768)
    with tempfile.TemporaryDirectory() as folder:
        StableDiffusionSafetyChecker(config).save_pretrained(folder)
        checker = SafetyCheckerModel(folder, torch.device("cpu"))
        return timed(lambda: checker(images), repeats, "SD safety checker (ViT-L/14, random weights), batch 1")


def robustness(frames: list[np.ndarray]) -> list[dict]:
    upscaled = [np.asarray(Image.fromarray(f).resize((512, 512), Image.Resampling.BICUBIC)) for f in frames]
    return [
        {"scheme": f"livegen-small, {frames[0].shape[1]}x{frames[0].shape[0]} model frames",
         **watermark.robustness(frames)},
        {"scheme": "livegen dwtdct, the frames upscaled to 512x512", **watermark.robustness(upscaled)},
        {"scheme": "invisible-watermark's encoder (dwtDct), the same 512x512",
         **watermark.robustness(upscaled, encoder="imwatermark")},
    ]


def run(config: ModelConfig, frames: int, output: Path, quick: bool = False) -> dict:
    with Progress() as progress:
        task = progress.add_task("safety", total=3)
        path = asyncio.run(whole_path(config, frames))
        progress.advance(task)
        model_frames = frames_of(config)
        costs = stage_costs(model_frames, 5 if quick else 50, checker=not quick)
        progress.advance(task)
        table = robustness(model_frames[:2] if quick else model_frames)
        progress.advance(task)
    stages = {stage: round(statistics.median(t[f"{stage}_ms"] for t in path["timings"]), 3)
              for stage in ("moderation", "check", "watermark")}

    def overhead(on: Series, off: Series) -> float:
        return round(statistics.median(on.ms) / statistics.median(off.ms) - 1, 4)

    on, off, on_new, off_new = (path[arm] for arm in ("on", "off", "on, new prompts", "off, new prompts"))
    results = {**header("safety"), "model": config.display_name, "frames": len(on.ms),
               "on": on.summary(), "off": off.summary(), "on_new_prompts": on_new.summary(),
               "off_new_prompts": off_new.summary(), "overhead": overhead(on, off),
               "overhead_new_prompts": overhead(on_new, off_new),
               "stages_in_frame": stages, "costs": costs, "robustness": table}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    lines = [f"Safety on the {r['model']} model; {machine_line(r['machine'])}.", "",
             "| warm frame, one session, in-process | p50 | p95 |", "|---|---|---|",
             f"| safety on (moderation, watermark) | {r['on']['p50_ms']} ms | {r['on']['p95_ms']} ms |",
             f"| safety off | {r['off']['p50_ms']} ms | {r['off']['p95_ms']} ms |",
             f"| safety on, a new prompt every frame | {r['on_new_prompts']['p50_ms']} ms | "
             f"{r['on_new_prompts']['p95_ms']} ms |",
             f"| safety off, a new prompt every frame | {r['off_new_prompts']['p50_ms']} ms | "
             f"{r['off_new_prompts']['p95_ms']} ms |", "",
             f"- whole safety path: **{r['overhead'] * 100:+.1f}%** on the warm frame's median, "
             f"{r['overhead_new_prompts'] * 100:+.1f}% with a new prompt every frame "
             f"({r['frames']} frames each, alternating blocks)",
             "- per-frame stage timings with safety on (median): "
             + ", ".join(f"{k} {v} ms" for k, v in r["stages_in_frame"].items()), "",
             "| stage alone | p50 | p95 |", "|---|---|---|"]
    lines += [f"| {c['stage']} | {c['p50_ms']} ms | {c['p95_ms']} ms |" for c in r["costs"]]
    lines += ["", "| watermark: bit accuracy after | none | JPEG q75 | half size and back | 10% crop |",
              "|---|---|---|---|---|"]
    lines += [f"| {row['scheme']} | {row['none']:.3f} | {row['jpeg75']:.3f} | {row['resize_half']:.3f} | "
              f"{row['crop10']:.3f} |" for row in r["robustness"]]
    return "\n".join(lines + [""])
