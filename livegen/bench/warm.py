"""`livegen bench warm`: a warm engine frame against the diffusers call people start from.

On the same pipeline, prompt and settings, in one run:
- direct: `pipe(prompt, num_inference_steps=1)` per frame, plus the same JPEG encode;
- engine: the warm engine in-process (prompt cache, fixed noise, no per-call set-up);
- websocket: the same engine behind uvicorn on loopback, measured by the Python client;
- cold: a fresh engine's start-to-ready time and its first frame after ready, against the warm median.
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

from livegen.bench.report import Series, header, save
from livegen.client import AsyncClient
from livegen.config import ModelConfig, Settings
from livegen.engine import Engine
from livegen.protocol import Frame, Generate
from livegen.server.background import BackgroundServer

PROMPT = "a red fox in the snow"


def bench_direct(model: Path, width: int, height: int, frames: int) -> Series:
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    series = Series("direct diffusers call")
    for i in range(frames + 2):
        started = time.perf_counter()
        image = pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, width=width, height=height).images[0]
        image.save(io.BytesIO(), "JPEG", quality=85)
        if i >= 2:  # two warm-up calls, like the engine's warm-up
            series.ms.append((time.perf_counter() - started) * 1000)
    return series


def _settings(model: Path, width: int, height: int) -> Settings:
    return Settings(models=[ModelConfig(source=str(model), name="bench", sizes=[(width, height)])])


def bench_engine(settings: Settings, frames: int) -> Series:
    return asyncio.run(_engine_frames(settings, frames))


async def _engine_frames(settings: Settings, frames: int) -> Series:
    engine = Engine(settings)
    await engine.start()
    series = Series("livegen engine (in-process)")
    session = engine.open_session()
    try:
        for i in range(frames):
            started = time.perf_counter()
            engine.submit(session, Generate(id=str(i), prompt=PROMPT))
            outcome = await session.next_outcome()
            assert isinstance(outcome, Frame), outcome
            series.ms.append((time.perf_counter() - started) * 1000)
    finally:
        await engine.stop()
    return series


async def _client_frames(url: str, frames: int, name: str, new_prompts: bool = False) -> tuple[Series, Series]:
    """Frames one after another on a new connection; `new_prompts` makes every prompt a cache miss."""
    round_trip, server_total = Series(name), Series("server total (same frames)")
    async with AsyncClient(url) as client:
        for i in range(frames):
            started = time.perf_counter()
            frame = await client.generate(f"{PROMPT} {i}" if new_prompts else PROMPT)
            round_trip.ms.append((time.perf_counter() - started) * 1000)
            server_total.ms.append(frame.timings["total_ms"])
    return round_trip, server_total


def bench_websocket_and_cold(settings: Settings, frames: int) -> dict[str, object]:
    started = time.perf_counter()
    server = BackgroundServer(settings)
    start_to_ready_s = time.perf_counter() - started
    try:
        first, _ = asyncio.run(_client_frames(server.ws_url, 1, "first frame after ready", new_prompts=True))
        round_trip, server_total = asyncio.run(_client_frames(server.ws_url, frames, "livegen over WebSocket"))
        new_prompt, _ = asyncio.run(_client_frames(server.ws_url, frames, "new prompt", new_prompts=True))
    finally:
        server.stop()
    overhead = Series("WebSocket overhead", [r - s for r, s in zip(round_trip.ms, server_total.ms, strict=True)])
    return {"start_to_ready_s": round(start_to_ready_s, 2), "first": first, "round_trip": round_trip,
            "new_prompt": new_prompt,
            "server_total": server_total, "overhead": overhead}


def _isolated(progress: Progress, name: str, fn, *args):
    """Each path in a fresh process: torch threads from one path must not slow the next."""
    task = progress.add_task(name, total=1)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(fn, *args).result()
    progress.update(task, completed=1)
    return result


def run(model: Path, width: int, height: int, frames: int, output: Path) -> dict[str, object]:
    settings = _settings(model, width, height)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        direct = _isolated(progress, "direct diffusers call", bench_direct, model, width, height, frames)
        engine = _isolated(progress, "livegen engine, in-process", bench_engine, settings, frames)
        served = _isolated(progress, "livegen over WebSocket, from a cold start", bench_websocket_and_cold,
                           settings, frames)
    warm_new_prompt = statistics.median(served["new_prompt"].ms)
    results = {
        **header("warm"),
        "model": str(model),
        "size": f"{width}x{height}",
        "frames": frames,
        "direct": direct.summary(),
        "engine": engine.summary(),
        "websocket": served["round_trip"].summary(),
        "websocket_new_prompt": served["new_prompt"].summary(),
        "server_total": served["server_total"].summary(),
        "websocket_overhead": served["overhead"].summary(),
        "engine_speedup_over_direct": round(statistics.median(direct.ms) / statistics.median(engine.ms), 2),
        "start_to_ready_s": served["start_to_ready_s"],
        "first_frame_after_ready_ms": round(served["first"].ms[0], 2),
        # The first frame's prompt is new, so it is compared with warm frames whose prompts are new too.
        "first_frame_over_warm_median": round(served["first"].ms[0] / warm_new_prompt, 2),
    }
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    rows = [("direct diffusers call", r["direct"]), ("livegen engine, in-process", r["engine"]),
            ("livegen over WebSocket (client round trip)", r["websocket"]),
            ("livegen over WebSocket, a new prompt every frame", r["websocket_new_prompt"]),
            ("WebSocket overhead (round trip - server total)", r["websocket_overhead"])]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, {r['frames']} frames; "
             f"{r['machine']['cpu']} ({r['machine']['cores']} cores), GPU: {r['machine']['gpu'] or 'none'}.",
             "", "| path | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} |" for name, s in rows]
    lines += ["", f"- engine speed-up over the direct call (p50): **{r['engine_speedup_over_direct']}x**",
              f"- start to ready (load + warm-up): {r['start_to_ready_s']} s",
              f"- first frame after ready: {r['first_frame_after_ready_ms']} ms = "
              f"**{r['first_frame_over_warm_median']}x** the warm median with new prompts "
              "(the first frame's prompt is new too)", ""]
    return "\n".join(lines)
