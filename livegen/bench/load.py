"""`livegen bench load`: many sessions at once, with cross-session micro-batching on and off.

1, 2, 4, 8, 16 and 32 concurrent WebSocket sessions, each with its own prompt, each sending its
next input as soon as its last frame arrives (a closed loop: every session always wants a frame).
Micro-batching on is the server's default (`max_batch` 8); off is `max_batch` 1. Measured by the
clients over a fixed window after one warm-up frame each: frames per second across all sessions
and frame latency p50/p99. StreamDiffusion's row, when given, is one stream serving the sessions
in turn (it has no sessions of its own). Writes load.json, load.md and load.png.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.progress import Progress

from livegen.bench.plots import load_curves
from livegen.bench.report import Series, header, machine_line, save
from livegen.client import AsyncClient
from livegen.config import ModelConfig, Settings
from livegen.server.background import BackgroundServer

SESSIONS = (1, 2, 4, 8, 16, 32)
SETTINGS = {"micro-batching on (max_batch 8)": 8, "micro-batching off (max_batch 1)": 1}


async def closed_loop(url: str, sessions: int, seconds: float) -> dict:
    latency = Series("frame latency")
    everyone_warm = asyncio.Barrier(sessions)

    async def session(k: int) -> None:
        prompt = f"a smiling cat, number {k}"
        async with AsyncClient(url) as client:
            await client.generate(prompt)  # warm-up: connected, and its prompt is cached
            await everyone_warm.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await client.generate(prompt)
                latency.ms.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(session(k) for k in range(sessions)))
    return {"sessions": sessions, "frames": len(latency.ms), "frames_per_s": round(len(latency.ms) / seconds, 1),
            "latency": latency.summary()}


def run(config: ModelConfig, seconds: float, output: Path, peer: dict | None = None) -> dict:
    rows = []
    with Progress() as progress:
        task = progress.add_task("sessions", total=len(SETTINGS) * len(SESSIONS))
        for setting, max_batch in SETTINGS.items():
            server = BackgroundServer(Settings(models=[config], max_batch=max_batch))
            try:
                for sessions in SESSIONS:
                    row = asyncio.run(closed_loop(server.ws_url, sessions, seconds))
                    rows.append({"setting": setting, **row})
                    progress.advance(task)
            finally:
                server.stop()
    if peer is not None:
        turns, n = peer["round_robin"], peer["round_robin"]["sessions"]
        # A session's frame latency in turn: its own frame and the other sessions' before it.
        waits = [sum(turns["ms"][i:i + n]) for i in range(len(turns["ms"]) - n + 1)]
        rows.append({"setting": "StreamDiffusion, one stream in turn", "sessions": n,
                     "frames": turns["frames"], "frames_per_s": round(turns["fps"], 1),
                     "latency": Series("StreamDiffusion", waits).summary()})
    results = {**header("load"), "model": config.display_name, "size": "x".join(map(str, config.sizes[0])),
               "seconds": seconds, "rows": rows}
    save(results, markdown(results), output)
    load_curves(rows, output / "load.png",
                f"{config.display_name} {results['size']}, 1 step: throughput and p99 against sessions")
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, closed loop for {r['seconds']} s per row; "
             f"{machine_line(m)}.", "",
             "| setting | sessions | frames/s (all sessions) | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['setting']} | {row['sessions']} | {row['frames_per_s']} | "
                     f"{row['latency']['p50_ms']} | {row['latency']['p99_ms']} |")
    return "\n".join(lines) + "\n"
