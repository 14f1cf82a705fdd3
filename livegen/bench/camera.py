"""`livegen bench camera`: how steady the camera filter's output is, and how much work it skips.

A synthetic camera, sent frame after frame for image-to-image as the playground's camera mode
sends it (JPEG input, JSON socket): a still scene with per-frame sensor noise, and the same scene
panning. Three settings on each:
- fresh noise: a new seed every frame, what a stateless per-frame call gives;
- fixed noise: the session's own seed on every frame (livegen's default);
- fixed noise + similarity filter at 0.98 (the playground's default): a frame that barely changed
  is answered `skipped` and the previous output stays on screen.

Flicker is the mean absolute difference between consecutive frames on screen (0-255 scale).
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from livegen.bench.report import Series, header, save
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


def run(config: ModelConfig, count: int, output: Path) -> dict:
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
    finally:
        server.stop()
    results = {**header("camera"),
               "model": config.display_name, "size": "x".join(map(str, config.sizes[0])), "strength": 0.5,
               "sensor_noise": SENSOR_NOISE, "rows": rows}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, strength {r['strength']}, sensor noise "
             f"σ={r['sensor_noise']}; {m['cpu']} ({m['cores']} cores), GPU: {m['gpu'] or 'none'}.", "",
             "| input | setting | flicker (mean abs diff) | inputs skipped | inputs/s | "
             "generated p50 ms | skipped answer p50 ms |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        gen = row["generated_latency"]["p50_ms"] if row["generated_latency"] else "–"
        skip = row["skipped_latency"]["p50_ms"] if row["skipped_latency"] else "–"
        lines.append(f"| {row['input']} | {row['setting']} | {row['flicker']} | {row['share_skipped']:.0%} | "
                     f"{row['inputs_per_s']} | {gen} | {skip} |")
    return "\n".join(lines) + "\n"
