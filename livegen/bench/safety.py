"""`livegen bench safety`: what each safety stage costs per frame, and how well the watermark survives.

- The whole path: one session's warm frames (in-process engine) with the server's safety stages
  on (moderation, watermark; no output checker is configured by default) and with them off, on
  one engine, in alternating blocks so that drift hits both alike; with a fixed prompt (moderation's
  verdict comes from its cache) and with a new prompt every frame (a verdict computed every frame:
  what typing costs). Each row says which stages ran, counted in its frames.
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

from livegen.bench.report import Rounds, Series, header, machine_line, ratio_interval, save
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


ARMS = {  # arm: (safety stages on, a new prompt every frame)
    "on": (True, False), "off": (False, False), "on, new prompts": (True, True), "off, new prompts": (False, True)}


async def whole_path(config: ModelConfig, frames: int) -> dict:
    """Warm frames with safety on and off, alternating blocks on one engine (the stages are
    switched off between blocks, so both arms share the process, threads and caches): with the
    prompt fixed (a slider: moderation's verdict is cached after the first frame) and with a new
    prompt every frame (typing: moderation judges every frame's prompt afresh). Each arm's samples
    are kept per block (the rounds of the interleaved run), with what actually ran: moderation
    verdicts computed and served from the cache, frames watermarked, the output checker."""
    with tempfile.TemporaryDirectory() as keys:
        settings = Settings(models=[config], speech=None)
        settings.safety = settings.safety.model_copy(update={"keys": Path(keys)})
        engine = Engine(settings)
        await engine.start()
        stages = engine.runners[config.display_name].safety
        assert stages is not None
        enabled = (stages.moderator, stages.watermarker)
        rounds = {arm: Rounds(f"safety {arm}") for arm in ARMS}
        ran = {arm: {"moderation_verdicts_computed": 0, "moderation_verdicts_cached": 0, "frames_watermarked": 0,
                     "output_checker": stages.checker_name} for arm in ARMS}
        timings: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        prompts = iter(range(10**9))
        try:
            for _ in range(BLOCKS):
                for arm, (on, new) in ARMS.items():
                    stages.moderator, stages.watermarker = enabled if on else (None, None)
                    before = stages.moderator.check.cache_info() if stages.moderator else None
                    rounds[arm].rounds.append([])
                    for _ in range(max(1, frames // BLOCKS)):
                        prompt = f"{PROMPT} number {next(prompts)}" if new else PROMPT
                        series, frame_timings = await engine_frames(engine, 1, prompt, arm)
                        rounds[arm].rounds[-1].extend(series.ms)
                        timings[arm].extend(frame_timings)
                        ran[arm]["frames_watermarked"] += stages.watermarker is not None
                    if stages.moderator:
                        after = stages.moderator.check.cache_info()
                        ran[arm]["moderation_verdicts_computed"] += after.misses - before.misses
                        ran[arm]["moderation_verdicts_cached"] += after.hits - before.hits
        finally:
            stages.moderator, stages.watermarker = enabled
            await engine.stop()
    return {"rounds": rounds, "ran": ran, "timings": timings, "configured": stages.describe()}


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

    def medians(timings: list[dict]) -> dict[str, float]:
        return {stage: round(statistics.median(t.get(f"{stage}_ms", 0.0) for t in timings), 3)
                for stage in ("moderation", "check", "watermark")}

    rounds = path["rounds"]
    on, off, on_new, off_new = (rounds[arm].series() for arm in ARMS)
    ratios = {  # (numerator arm, denominator arm): what the ratio shows
        "on_over_off": ratio_interval(rounds["on"], rounds["off"]),
        "on_new_over_off_new": ratio_interval(rounds["on, new prompts"], rounds["off, new prompts"]),
        "on_new_over_on": ratio_interval(rounds["on, new prompts"], rounds["on"]),
        "on_new_over_off": ratio_interval(rounds["on, new prompts"], rounds["off"]),
    }
    results = {**header("safety"), "model": config.display_name, "frames": len(on.ms), "blocks": BLOCKS,
               "on": on.summary(), "off": off.summary(), "on_new_prompts": on_new.summary(),
               "off_new_prompts": off_new.summary(),
               "overhead": round(ratios["on_over_off"]["ratio"] - 1, 4),
               "overhead_new_prompts": round(ratios["on_new_over_off_new"]["ratio"] - 1, 4),
               "ratios": ratios, "configured": path["configured"], "ran": path["ran"],
               "stages_in_frame": medians(path["timings"]["on"]),
               "stages_in_frame_new_prompts": medians(path["timings"]["on, new prompts"]),
               "costs": costs, "robustness": table}
    save(results, markdown(results), output)
    return results


def _stages_ran(ran: dict, frames: int) -> str:
    """What ran in an arm's frames, from the counts: 'moderation (verdict cached 35/36), watermark, ...'."""
    computed, cached = ran["moderation_verdicts_computed"], ran["moderation_verdicts_cached"]
    if computed + cached == 0:
        moderation = "no moderation"
    elif computed >= frames:
        moderation = f"moderation (verdict computed every frame, {computed}/{frames})"
    else:
        moderation = f"moderation (verdict cached {cached}/{frames})"
    marked = "watermark" if ran["frames_watermarked"] == frames else (
        "no watermark" if ran["frames_watermarked"] == 0 else f"watermark on {ran['frames_watermarked']}/{frames}")
    checker = f"output checker {ran['output_checker']}" if ran["output_checker"] else "no output checker configured"
    return f"{moderation}, {marked}, {checker}"


def _interval(ratio: dict) -> str:
    return f"{ratio['ratio']}x ({ratio['low']}-{ratio['high']})"


def markdown(r: dict) -> str:
    rows = {"on": "safety on, prompt fixed", "off": "safety off, prompt fixed",
            "on, new prompts": "safety on, a new prompt every frame (typing)",
            "off, new prompts": "safety off, a new prompt every frame"}
    keys = {"on": "on", "off": "off", "on, new prompts": "on_new_prompts", "off, new prompts": "off_new_prompts"}
    ratios = r["ratios"]
    lines = [f"Safety on the {r['model']} model; {machine_line(r['machine'])}. One session, in-process, "
             f"{r['frames']} frames per arm in {r['blocks']} alternating blocks (the rounds of the intervals). "
             f"The stages that ran are counted in each arm's frames.", "",
             "| warm frame | stages that ran | p50 | p95 |", "|---|---|---|---|"]
    for arm, label in rows.items():
        summary = r[keys[arm]]
        lines.append(f"| {label} | {_stages_ran(r['ran'][arm], summary['n'])} | {summary['p50_ms']} ms | "
                     f"{summary['p95_ms']} ms |")
    lines += ["",
              f"- whole safety path, prompt fixed (moderation's verdict cached): **{r['overhead'] * 100:+.1f}%** on "
              f"the warm frame's median, on/off {_interval(ratios['on_over_off'])}",
              f"- whole safety path, a new prompt every frame (moderation uncached): "
              f"{r['overhead_new_prompts'] * 100:+.1f}%, on/off {_interval(ratios['on_new_over_off_new'])}",
              f"- typing with safety on, against a fixed prompt with safety on: "
              f"{_interval(ratios['on_new_over_on'])}; against a fixed prompt with safety off: "
              f"{_interval(ratios['on_new_over_off'])}",
              "- per-frame stage timings with safety on (median), prompt fixed: "
              + ", ".join(f"{k} {v} ms" for k, v in r["stages_in_frame"].items())
              + "; a new prompt every frame: "
              + ", ".join(f"{k} {v} ms" for k, v in r["stages_in_frame_new_prompts"].items()), "",
             "| stage alone | p50 | p95 |", "|---|---|---|"]
    lines += [f"| {c['stage']} | {c['p50_ms']} ms | {c['p95_ms']} ms |" for c in r["costs"]]
    lines += ["", "| watermark: bit accuracy after | none | JPEG q75 | half size and back | 10% crop |",
              "|---|---|---|---|---|"]
    lines += [f"| {row['scheme']} | {row['none']:.3f} | {row['jpeg75']:.3f} | {row['resize_half']:.3f} | "
              f"{row['crop10']:.3f} |" for row in r["robustness"]]
    return "\n".join(lines + [""])
