"""`livegen bench cold`: from process start to ready, and a new connection's first frame.

Each run starts `python -m livegen serve` as a fresh process and times it to the first 200 from
/readyz (imports, load, warm-up at every served size). A new connection then asks for one frame
with a prompt the server has never seen, and the same connection asks for more frames with new
prompts: the first frame after ready is compared with the warm median of frames that do the same
work (a new prompt each), and with the warm median of cached-prompt frames.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from rich.progress import Progress

from livegen.bench.report import Series, header, machine_line, save
from livegen.bench.warm import client_frames
from livegen.config import ModelConfig
from livegen.models.embedded import EMBEDDED_MODEL
from livegen.server.background import ServeProcess, free_port


def one_cold_start(config: ModelConfig, frames: int) -> dict:
    sizes = [arg for w, h in config.sizes for arg in ("--size", f"{w}x{h}")]
    model = [] if Path(config.source) == EMBEDDED_MODEL else ["--model", config.source]
    started = time.perf_counter()
    server = ServeProcess(free_port(), [*model, *sizes])
    ready_s = time.perf_counter() - started
    try:
        url = server.ws_url
        first, _ = asyncio.run(client_frames(url, 1, "first frame", new_prompts=True))
        new_prompts, _ = asyncio.run(client_frames(url, frames, "warm, new prompts", new_prompts=True))
        cached, _ = asyncio.run(client_frames(url, frames, "warm, cached prompt"))
    finally:
        server.kill()
    first_ms = first.ms[0]
    return {"start_to_ready_s": round(ready_s, 2), "first_frame_ms": round(first_ms, 2),
            "warm_new_prompt_p50_ms": round(statistics.median(new_prompts.ms), 2),
            "warm_cached_p50_ms": round(statistics.median(cached.ms), 2),
            "first_over_warm_new_prompt": round(first_ms / statistics.median(new_prompts.ms), 2),
            "first_over_warm_cached": round(first_ms / statistics.median(cached.ms), 2)}


def run(config: ModelConfig, runs: int, frames: int, output: Path) -> dict:
    rows = []
    with Progress() as progress:
        task = progress.add_task("cold starts", total=runs)
        for _ in range(runs):
            rows.append(one_cold_start(config, frames))
            progress.advance(task)
    ready = Series("start to ready", [row["start_to_ready_s"] * 1000 for row in rows])
    results = {**header("cold"), "model": config.display_name, "size": "x".join(map(str, config.sizes[0])),
               "runs": rows, "start_to_ready": ready.summary(),
               "first_over_warm_new_prompt_median": statistics.median(r["first_over_warm_new_prompt"] for r in rows)}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, `python -m livegen serve` started {len(r['runs'])} "
             f"times; {machine_line(m)}.", "",
             "| run | start to ready s | first frame ms | warm p50 ms, new prompts | first / warm | "
             "warm p50 ms, cached prompt |", "|---|---|---|---|---|---|"]
    for i, row in enumerate(r["runs"], 1):
        lines.append(f"| {i} | {row['start_to_ready_s']} | {row['first_frame_ms']} | {row['warm_new_prompt_p50_ms']} | "
                     f"{row['first_over_warm_new_prompt']}x | {row['warm_cached_p50_ms']} |")
    return "\n".join(lines) + "\n"
