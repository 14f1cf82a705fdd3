"""`livegen bench camera`: how steady the camera filter's output is, and how much work it skips.

A synthetic camera, sent frame after frame for image-to-image as the playground's camera mode
sends it (JPEG input, JSON socket): a still scene with per-frame sensor noise, and the same scene
panning. Three settings on each:
- fresh noise: a new seed every frame, what a stateless per-frame call gives;
- fixed noise: the session's own seed on every frame (livegen's default);
- fixed noise + similarity filter at 0.98 (the playground's default): a frame that barely changed
  is answered `skipped` and the previous output stays on screen.

Flicker is the mean absolute difference between consecutive frames on screen (0-255 scale).

The flicker and skip rows ask for lossless PNG output, so that the encoder adds no difference
between frames of its own.

Speed on the same panning sequence (filter off), against the direct diffusers image-to-image
call per frame and, with `peer_python`, StreamDiffusion's image-to-image stream. Every system's
frame ends in the same encode, livegen's default JPEG at quality 85 (StreamDiffusion's worker
encodes the same). They alternate in rounds, a block of frames each in turn, and each ratio to
livegen comes with a bootstrap interval over rounds. Each runs in a process of its own: livegen's
server, the direct call in this one, StreamDiffusion in its own environment. Two torch thread
pools in one process slow each other (libgomp stops spinning when its workers outnumber the cores):
with the server in this process, livegen took 51 ms a frame and the direct call 84 ms.
"""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from livegen.bench.report import Rounds, Series, header, machine_line, ratio_interval, save
from livegen.bench.streamdiffusion import PeerProcess
from livegen.client import AsyncClient
from livegen.config import ModelConfig
from livegen.protocol import Frame, Skipped
from livegen.server.background import ServeProcess

SIMILARITY_THRESHOLD = 0.98
SPEED_FORMAT, SPEED_QUALITY = "jpeg", 85  # livegen's default output, for every system in the speed table
ROUNDS, QUICK_ROUNDS = 10, 2
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


def direct_img2img(config: ModelConfig):
    """`StableDiffusionImg2ImgPipeline` per frame at strength 0.5 (2 scheduled steps, 1 of them run):
    a function that decodes an input JPEG, runs the call and encodes the output as livegen does."""
    from diffusers import AutoPipelineForImage2Image

    from livegen.engine.images import encode_frame
    from livegen.models.embedded import pipeline_components

    width, height = config.sizes[0]
    path = Path(config.source)
    pipe = AutoPipelineForImage2Image.from_pretrained(path, local_files_only=True, **pipeline_components(path))
    pipe.set_progress_bar_config(disable=True)

    def frame(data: bytes) -> bytes:
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height))
        output = pipe(PROMPT, image=image, strength=0.5, num_inference_steps=2,
                      guidance_scale=config.guidance or 0.0).images[0]
        return encode_frame(np.asarray(output), SPEED_FORMAT, SPEED_QUALITY)

    return frame


async def interleaved_speed(url: str, direct, frames: list[bytes], rounds: int,
                            peer: PeerProcess | None = None) -> list[Rounds]:
    """livegen over its socket, the direct call and the peer, a block of frames each in turn, on the
    same inputs. The peer times its frames itself (decode, image-to-image, JPEG), without the pipe."""
    livegen, baseline = Rounds("livegen camera stream (WebSocket)"), Rounds("direct diffusers image-to-image call")
    streamdiffusion = Rounds("StreamDiffusion image-to-image stream (strength 0.5)")
    block = max(1, len(frames) // rounds)
    async with AsyncClient(url, codec="json") as client:
        for data in frames[:2]:  # two warm-up frames each (the peer warmed up before it said ready)
            await client.generate(PROMPT, image=data, strength=0.5, format=SPEED_FORMAT, quality=SPEED_QUALITY)
            direct(data)
        for r in range(rounds):
            inputs = [frames[(r * block + i) % len(frames)] for i in range(block)]
            livegen.rounds.append([])
            for data in inputs:
                started = time.perf_counter()
                frame = await client.generate(PROMPT, image=data, strength=0.5, format=SPEED_FORMAT,
                                              quality=SPEED_QUALITY)
                livegen.rounds[-1].append((time.perf_counter() - started) * 1000)
                assert frame.format == SPEED_FORMAT, frame
            baseline.rounds.append([])
            for data in inputs:
                started = time.perf_counter()
                direct(data)
                baseline.rounds[-1].append((time.perf_counter() - started) * 1000)
            if peer is not None:
                streamdiffusion.rounds.append(peer.frames([PROMPT] * len(inputs), inputs))
    return [livegen, baseline] + ([streamdiffusion] if peer is not None else [])


def run(config: ModelConfig, count: int, output: Path, peer_python: Path | None = None) -> dict:
    # The synthetic camera sends its next frame as soon as one is answered, and a skip is answered in
    # a millisecond: faster than any camera, past the per-session message limit (a policy, not speed).
    server = ServeProcess.serving(config, env={"LIVEGEN_ACCESS__LIMITS__INPUTS_PER_SESSION": "1000000/second"})
    # Started now, it loads and warms up while the flicker rows run.
    peer = PeerProcess(peer_python, Path(config.source), *config.sizes[0], mode="img2img") if peer_python else None
    rows = []
    rounds = QUICK_ROUNDS if count < 20 else ROUNDS
    try:
        with Progress() as progress:
            task = progress.add_task("camera streams", total=2 * len(SETTINGS) + 1)
            for moving in (False, True):
                frames = camera_frames(count, moving)
                for name, fields in SETTINGS.items():
                    result = asyncio.run(stream(server.ws_url, frames, **fields))
                    rows.append({"input": "panning" if moving else "still", "setting": name, **result})
                    progress.advance(task)
            if peer is not None:
                peer.wait_ready()
            # The direct call loads and runs on a thread of its own: torch's pool of workers lives as
            # long as the thread that started it, so none is left to slow an engine this process runs
            # next (`livegen bench all` runs the safety bench after this one).
            with ThreadPoolExecutor(max_workers=1) as direct_thread:
                direct = direct_thread.submit(direct_img2img, config).result()
                systems = asyncio.run(interleaved_speed(
                    server.ws_url, lambda data: direct_thread.submit(direct, data).result(),
                    camera_frames(count, moving=True), rounds, peer))
            progress.advance(task)
    finally:
        server.kill()
        if peer is not None:
            peer.close()
    encode = f"{SPEED_FORMAT.upper()} q{SPEED_QUALITY}"
    livegen, *others = systems
    speed = {"livegen": {"label": livegen.name, "encode": encode, **livegen.series().summary()}}
    for key, system in zip(("direct", "streamdiffusion"), others):
        speed[key] = {"label": system.name, "encode": encode, **system.series().summary(),
                      "over_livegen": ratio_interval(system, livegen)}
    results = {**header("camera"),
               "model": config.display_name, "size": "x".join(map(str, config.sizes[0])), "strength": 0.5,
               "sensor_noise": SENSOR_NOISE, "flicker_format": "png", "speed_rounds": rounds,
               "rows": rows, "speed": speed}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, strength {r['strength']}, sensor noise "
             f"σ={r['sensor_noise']}; output {r['flicker_format'].upper()} (lossless, so flicker is the model's "
             f"own); {machine_line(m)}.", "",
             "| input | setting | flicker (mean abs diff) | inputs skipped | inputs/s | "
             "generated p50 ms | skipped answer p50 ms |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        gen = row["generated_latency"]["p50_ms"] if row["generated_latency"] else "–"
        skip = row["skipped_latency"]["p50_ms"] if row["skipped_latency"] else "–"
        lines.append(f"| {row['input']} | {row['setting']} | {row['flicker']} | {row['share_skipped']:.0%} | "
                     f"{row['inputs_per_s']} | {gen} | {skip} |")
    lines += ["", f"Speed on the panning sequence, similarity filter off, one frame at a time, every output "
              f"encoded as {r['speed']['livegen']['encode']}; the systems interleaved in {r['speed_rounds']} "
              "rounds, each in its own process:", "",
              "| system | output | p50 ms | p95 ms | p50 vs livegen (95% interval) |", "|---|---|---|---|---|"]
    for name, s in r["speed"].items():
        if name == "livegen":
            versus = "1x (the reference)"
        else:
            ratio = s["over_livegen"]
            versus = f"{ratio['ratio']}x ({ratio['low']}-{ratio['high']})"
        lines.append(f"| {s['label']} | {s['encode']} | {s['p50_ms']} | {s['p95_ms']} | {versus} |")
    return "\n".join(lines) + "\n"
