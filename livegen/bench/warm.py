"""`livegen bench warm`: one session's warm frames, livegen against what people would use instead.

Same weights, prompt and size, in one run; each system in a fresh process, so that torch threads
from one cannot slow the next:
- livegen over WebSocket: the round trip measured by the Python client, beside the server's own
  per-stage timings; and the same with a new prompt every frame (text encoding not cached);
- livegen engine in-process: the same engine without the socket;
- direct diffusers call: `pipe(prompt, num_inference_steps=1)` per frame plus the same JPEG encode;
- the naive server (bench/naive.py): HTTP per frame with the teacher's 50 steps, and serverless
  with the model loaded per request;
- StreamDiffusion's `txt2img()` (bench/streamdiffusion.py), when its results are given.

Writes warm.json, warm.md and latency-cdf.png (one curve per system).
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from livegen.bench.naive import bench_naive
from livegen.bench.plots import latency_cdf
from livegen.bench.report import Series, header, machine_line, save
from livegen.client import AsyncClient
from livegen.config import ModelConfig, Settings
from livegen.engine import Engine
from livegen.models.loader import quiet_libraries
from livegen.protocol import Frame, Generate
from livegen.server.background import BackgroundServer

PROMPT = "a smiling cat"
NAIVE_FRAMES = 10  # the teacher's 50 steps take seconds a frame on a CPU


def bench_direct(config: ModelConfig, frames: int) -> Series:
    from diffusers import DiffusionPipeline

    from livegen.models.embedded import pipeline_components

    width, height = config.sizes[0]
    path = Path(config.source)
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, **pipeline_components(path))
    pipe.set_progress_bar_config(disable=True)
    series = Series("direct diffusers call")
    for i in range(frames + 2):
        started = time.perf_counter()
        image = pipe(PROMPT, num_inference_steps=1, guidance_scale=config.guidance or 0.0,
                     width=width, height=height).images[0]
        image.save(io.BytesIO(), "JPEG", quality=85)
        if i >= 2:  # two warm-up calls, like the engine's warm-up
            series.ms.append((time.perf_counter() - started) * 1000)
    return series


def bench_engine(config: ModelConfig, frames: int) -> Series:
    async def measure() -> Series:
        engine = Engine(Settings(models=[config]))
        await engine.start()
        try:
            return (await engine_frames(engine, frames, PROMPT, "livegen engine, in-process"))[0]
        finally:
            await engine.stop()

    return asyncio.run(measure())


async def engine_frames(engine: Engine, frames: int, prompt: str, name: str) -> tuple[Series, list[dict]]:
    """One session on a started engine, frames one after another: latency and each frame's timings."""
    series, timings = Series(name), []
    session = engine.open_session()
    try:
        for i in range(frames):
            started = time.perf_counter()
            await engine.submit(session, Generate(id=str(i), prompt=prompt))
            outcome = await session.next_outcome()
            assert isinstance(outcome, Frame), outcome
            series.ms.append((time.perf_counter() - started) * 1000)
            timings.append(outcome.timings)
    finally:
        engine.close_session(session)
    return series, timings


async def client_frames(url: str, frames: int, name: str, new_prompts: bool = False) -> tuple[Series, list[dict]]:
    """Frames one after another on a new connection, and each frame's server timings."""
    round_trip, timings = Series(name), []
    async with AsyncClient(url) as client:
        for i in range(frames):
            started = time.perf_counter()
            frame = await client.generate(f"{PROMPT} {i}" if new_prompts else PROMPT)
            round_trip.ms.append((time.perf_counter() - started) * 1000)
            timings.append(frame.timings)
    return round_trip, timings


def stage_medians(timings: list[dict]) -> dict[str, float]:
    return {stage: round(statistics.median(t[stage] for t in timings), 2) for stage in timings[0]}


def bench_websocket(config: ModelConfig, frames: int) -> dict[str, object]:
    server = BackgroundServer(Settings(models=[config]))
    try:
        round_trip, timings = asyncio.run(client_frames(server.ws_url, frames, "livegen over WebSocket"))
        new_prompt, _ = asyncio.run(client_frames(server.ws_url, frames, "livegen, a new prompt every frame",
                                                  new_prompts=True))
    finally:
        server.stop()
    overhead = Series("WebSocket overhead", [r - t["total_ms"] for r, t in zip(round_trip.ms, timings, strict=True)])
    return {"round_trip": round_trip, "new_prompt": new_prompt, "overhead": overhead,
            "stages": stage_medians(timings)}


def _isolated(progress: Progress, name: str, fn, *args):
    """Each system in a fresh process: torch threads from one must not slow the next."""
    task = progress.add_task(name, total=1)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=quiet_libraries) as pool:
        result = pool.submit(fn, *args).result()
    progress.update(task, completed=1)
    return result


def run(config: ModelConfig, frames: int, output: Path, peer: dict | None = None) -> dict[str, object]:
    width, height = config.sizes[0]
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        served = _isolated(progress, "livegen over WebSocket", bench_websocket, config, frames)
        engine = _isolated(progress, "livegen engine, in-process", bench_engine, config, frames)
        direct = _isolated(progress, "direct diffusers call", bench_direct, config, frames)
        naive = _isolated(progress, "naive server and serverless", bench_naive, Path(config.source),
                          output / "naive-teacher", width, height, min(frames, NAIVE_FRAMES), PROMPT,
                          config.guidance or 0.0)
    systems = {"livegen": served["round_trip"], "livegen_new_prompt": served["new_prompt"],
               "livegen_engine": engine, "direct": direct, "naive_teacher": naive["teacher"],
               "serverless": naive["serverless"]}
    if peer is not None:
        systems["streamdiffusion"] = Series("StreamDiffusion txt2img", peer["txt2img_ms"])
    livegen_p50 = statistics.median(served["round_trip"].ms)
    results = {
        **header("warm"),
        "model": config.display_name, "size": f"{width}x{height}", "frames": frames, "prompt": PROMPT,
        "systems": {key: {"label": s.name, **s.summary(), "fps": round(1000 / statistics.fmean(s.ms), 1),
                          "over_livegen": round(statistics.median(s.ms) / livegen_p50, 2)}
                    for key, s in systems.items()},
        "server_stages_p50_ms": served["stages"],
        "websocket_overhead": served["overhead"].summary(),
    }
    save(results, markdown(results), output)
    latency_cdf(list(systems.values()), output / "latency-cdf.png",
                f"Warm frame latency, {config.display_name} {width}x{height}, 1 step (one session)")
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, one session, {r['frames']} frames per system "
             f"(naive ones: fewer); {machine_line(m)}.", "",
             "| system | p50 ms | p95 ms | p99 ms | frames/s | p50 vs livegen |", "|---|---|---|---|---|---|"]
    for s in r["systems"].values():
        lines.append(f"| {s['label']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | {s['fps']} | "
                     f"{s['over_livegen']}x |")
    stages = ", ".join(f"{k.removesuffix('_ms')} {v}" for k, v in r["server_stages_p50_ms"].items())
    lines += ["", f"Server stages, p50 ms: {stages}. WebSocket overhead (round trip - server total): "
                  f"{r['websocket_overhead']['p50_ms']} ms p50.", ""]
    return "\n".join(lines)
