"""`livegen bench camera`: how steady the camera filter's output is, and how much work it skips.

A synthetic camera, sent frame after frame for image-to-image as the playground's camera mode
sends it (JPEG input, JSON socket): a still scene with per-frame sensor noise, and the same scene
panning. Three settings on each:
- fresh noise: a new seed every frame, what a stateless per-frame call gives;
- fixed noise: the session's own seed on every frame (livegen's default);
- fixed noise + similarity filter at 0.98 (the playground's default): a frame that barely changed
  is answered `skipped` and the previous output stays on screen.

Flicker is the mean absolute difference between consecutive frames on screen (0-255 scale).

Speed on the same panning sequence (filter off), against the direct diffusers image-to-image
call per frame and, when its results are given, StreamDiffusion's `img2img()`.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from livegen.bench.report import Series, header, machine_line, save
from livegen.client import AsyncClient
from livegen.config import ModelConfig, Settings
from livegen.protocol import Frame, Skipped
from livegen.server.background import BackgroundServer

SIMILARITY_THRESHOLD = 0.98
SENSOR_NOISE = 2.0  # standard deviation, 0-255 scale
PROMPT = "a smiling cat"
SETTINGS = {
    "fresh noise": {"fresh_seed": True},
    "fixed noise": {},
    "fixed noise + similarity filter": {"similarity_filter": SIMILARITY_THRESHOLD},
}


def camera_frames(count: int, moving: bool, side: int = 256, seed: int = 0) -> list[bytes]:
    """JPEG frames of a synthetic scene: a gradient, a disc and a square, with sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    frames = []
    for i in range(count):
        cx = side * 0.35 + (i * 4 if moving else 0) % (side * 0.4)
        scene = np.stack([x / side * 200 + 30, y / side * 120 + 60, 160 - x / side * 80], -1)
        scene[(x - cx) ** 2 + (y - side * 0.5) ** 2 < (side * 0.18) ** 2] = (230, 190, 40)
        scene[int(side * 0.65):int(side * 0.85), int(side * 0.6):int(side * 0.8)] = (40, 60, 200)
        scene += rng.normal(0, SENSOR_NOISE, scene.shape)
        buffer = io.BytesIO()
        Image.fromarray(scene.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        frames.append(buffer.getvalue())
    return frames


async def stream(url: str, frames: list[bytes], fresh_seed: bool = False, **fields) -> dict:
    """Send each frame and wait for its outcome; return flicker, skips and latencies."""
    shown: list[np.ndarray] = []
    generated, skipped = Series("generated"), Series("skipped")
    started = time.perf_counter()
    async with AsyncClient(url, codec="json") as client:
        for i, image in enumerate(frames):
            sent = time.perf_counter()
            seed = {"seed": i} if fresh_seed else {}
            input_id = await client.send(PROMPT, image=image, strength=0.5, format="png", **seed, **fields)
            outcome = await client.receive()
            assert outcome.id == input_id, outcome
            elapsed = (time.perf_counter() - sent) * 1000
            if isinstance(outcome, Frame):
                generated.ms.append(elapsed)
                shown.append(np.asarray(Image.open(io.BytesIO(outcome.image)), dtype=np.float32))
            elif isinstance(outcome, Skipped):
                skipped.ms.append(elapsed)
                shown.append(shown[-1])
            else:
                raise RuntimeError(f"camera frame {i} failed: {outcome}")
    seconds = time.perf_counter() - started
    flicker = [float(np.abs(a - b).mean()) for a, b in zip(shown, shown[1:])]
    return {
        "inputs": len(frames), "generated": len(generated.ms), "skipped": len(skipped.ms),
        "share_skipped": round(len(skipped.ms) / len(frames), 3),
        "flicker": round(float(np.mean(flicker)), 2),
        "inputs_per_s": round(len(frames) / seconds, 1),
        "generated_latency": generated.summary() if generated.ms else None,
        "skipped_latency": skipped.summary() if skipped.ms else None,
    }


def bench_direct_img2img(config: ModelConfig, frames: list[bytes]) -> Series:
    """`StableDiffusionImg2ImgPipeline` per frame at strength 0.5: 2 scheduled steps, 1 of them run."""
    from diffusers import AutoPipelineForImage2Image

    from livegen.models.embedded import pipeline_components

    width, height = config.sizes[0]
    path = Path(config.source)
    pipe = AutoPipelineForImage2Image.from_pretrained(path, local_files_only=True, **pipeline_components(path))
    pipe.set_progress_bar_config(disable=True)
    series = Series("direct diffusers image-to-image call")
    for i, data in enumerate(frames[:2] + frames):  # two warm-up calls
        started = time.perf_counter()
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height))
        output = pipe(PROMPT, image=image, strength=0.5, num_inference_steps=2,
                      guidance_scale=config.guidance or 0.0).images[0]
        output.save(io.BytesIO(), "PNG", compress_level=1)
        if i >= 2:
            series.ms.append((time.perf_counter() - started) * 1000)
    return series


def run(config: ModelConfig, count: int, output: Path, peer: dict | None = None) -> dict:
    server = BackgroundServer(Settings(models=[config]))
    rows = []
    try:
        with Progress() as progress:
            task = progress.add_task("camera streams", total=2 * len(SETTINGS))
            for moving in (False, True):
                frames = camera_frames(count, moving)
                for name, fields in SETTINGS.items():
                    result = asyncio.run(stream(server.ws_url, frames, **fields))
                    rows.append({"input": "panning" if moving else "still", "setting": name, **result})
                    progress.advance(task)
        direct = bench_direct_img2img(config, camera_frames(count, moving=True))
    finally:
        server.stop()
    livegen_row = next(r for r in rows if r["input"] == "panning" and r["setting"] == "fixed noise")
    speed = {"livegen": {"label": "livegen camera stream (WebSocket)", **livegen_row["generated_latency"]},
             "direct": {"label": direct.name, **direct.summary()}}
    if peer is not None:
        speed["streamdiffusion"] = {"label": "StreamDiffusion img2img", **Series("", peer["img2img_ms"]).summary()}
    results = {**header("camera"),
               "model": config.display_name, "size": "x".join(map(str, config.sizes[0])), "strength": 0.5,
               "sensor_noise": SENSOR_NOISE, "rows": rows, "speed": speed}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, strength {r['strength']}, sensor noise "
             f"σ={r['sensor_noise']}; {machine_line(m)}.", "",
             "| input | setting | flicker (mean abs diff) | inputs skipped | inputs/s | "
             "generated p50 ms | skipped answer p50 ms |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        gen = row["generated_latency"]["p50_ms"] if row["generated_latency"] else "–"
        skip = row["skipped_latency"]["p50_ms"] if row["skipped_latency"] else "–"
        lines.append(f"| {row['input']} | {row['setting']} | {row['flicker']} | {row['share_skipped']:.0%} | "
                     f"{row['inputs_per_s']} | {gen} | {skip} |")
    lines += ["", "Speed on the panning sequence, similarity filter off, one frame at a time:", "",
              "| system | p50 ms | p95 ms | p50 vs livegen |", "|---|---|---|---|"]
    base = r["speed"]["livegen"]["p50_ms"]
    for s in r["speed"].values():
        lines.append(f"| {s['label']} | {s['p50_ms']} | {s['p95_ms']} | {round(s['p50_ms'] / base, 2)}x |")
    return "\n".join(lines) + "\n"
