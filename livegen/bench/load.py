"""`livegen bench load`: many sessions at once, with cross-session micro-batching on and off.

1, 2, 4, 8, 16 and 32 concurrent WebSocket sessions, each with its own prompt, each sending its
next input as soon as its last frame arrives (a closed loop: every session always wants a frame).
Micro-batching on is the server's default (`max_batch` 8); off is `max_batch` 1. Both servers run
side by side and the two arms are interleaved in rounds (on, off, on, off, ... at each session
count, on the same connections, opened and warmed once: one frame each, its prompt cached), so
drift on a shared machine hits both alike. In each window every session starts frames until the
window closes and finishes the frame it is in;
frames per second are the frames completed divided by the ELAPSED time, from the window's start
to the last frame's arrival (not the nominal window). The batching on/off ratio of frames/s
comes with a bootstrap interval over rounds. StreamDiffusion's row, when given, is one stream
serving the sessions in turn (it has no sessions of its own; its frames/s are its frames over its
own elapsed time, measured in its own run, not interleaved). Writes load.json, load.md, load.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from rich.progress import Progress

from livegen.bench.plots import load_curves
from livegen.bench.report import Rounds, Series, header, machine_line, ratio_interval, save
from livegen.client import AsyncClient
from livegen.config import ModelConfig, Settings
from livegen.server.background import BackgroundServer

SESSIONS = (1, 2, 4, 8, 16, 32)
SETTINGS = {"micro-batching on (max_batch 8)": 8, "micro-batching off (max_batch 1)": 1}
ROUNDS, QUICK_ROUNDS = 5, 2


async def window(clients: list[AsyncClient], seconds: float) -> dict:
    """One window: every session in a closed loop until `seconds` after the window starts, each
    finishing the frame it is in; elapsed runs to the last frame's arrival."""
    latency: list[float] = []
    start = time.perf_counter()
    deadline, end = start + seconds, start

    async def session(k: int, client: AsyncClient) -> None:
        nonlocal end
        prompt = f"a smiling cat, number {k}"
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await client.generate(prompt)
            done = time.perf_counter()
            latency.append((done - started) * 1000)
            end = max(end, done)

    await asyncio.gather(*(session(k, client) for k, client in enumerate(clients)))
    return {"frames": len(latency), "elapsed_s": end - start, "ms": latency}


async def interleaved(urls: dict[str, str], sessions: int, rounds: int, seconds: float) -> dict[str, list[dict]]:
    """`sessions` connections to each server, warm (connected, prompt cached), then the arms' windows
    in turn, round after round, on the same connections."""
    async with contextlib.AsyncExitStack() as stack:
        clients = {arm: [await stack.enter_async_context(AsyncClient(url)) for _ in range(sessions)]
                   for arm, url in urls.items()}
        for arm_clients in clients.values():
            await asyncio.gather(*(client.generate(f"a smiling cat, number {k}")
                                   for k, client in enumerate(arm_clients)))
        windows: dict[str, list[dict]] = {arm: [] for arm in urls}
        for _ in range(rounds):
            for arm, arm_clients in clients.items():
                windows[arm].append(await window(arm_clients, seconds))
    return windows


def run(config: ModelConfig, seconds: float, output: Path, peer: dict | None = None) -> dict:
    rounds = QUICK_ROUNDS if seconds < 2 else ROUNDS
    window_s = seconds / rounds
    # (setting, sessions) -> per-round frames/s, latencies, frames, elapsed
    fps: dict[tuple[str, int], Rounds] = {}
    latency: dict[tuple[str, int], Series] = {}
    totals: dict[tuple[str, int], list[float]] = {}
    servers = {setting: BackgroundServer(Settings(models=[config], max_batch=max_batch))
               for setting, max_batch in SETTINGS.items()}
    try:
        with Progress() as progress:
            task = progress.add_task("sessions", total=len(SESSIONS))
            for sessions in SESSIONS:
                urls = {setting: server.ws_url for setting, server in servers.items()}
                for setting, windows in asyncio.run(interleaved(urls, sessions, rounds, window_s)).items():
                    key = (setting, sessions)
                    fps[key] = Rounds(setting, [[w["frames"] / w["elapsed_s"] if w["elapsed_s"] > 0 else 0.0]
                                                for w in windows])
                    latency[key] = Series(setting, [ms for w in windows for ms in w["ms"]])
                    totals[key] = [sum(w["frames"] for w in windows), sum(w["elapsed_s"] for w in windows)]
                progress.advance(task)
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    on, off = SETTINGS
    for setting in SETTINGS:
        for sessions in SESSIONS:
            frames, elapsed = totals[setting, sessions]
            row = {"setting": setting, "sessions": sessions, "rounds": rounds, "frames": frames,
                   "elapsed_s": round(elapsed, 4), "nominal_s": round(window_s * rounds, 4),
                   "frames_per_s": round(frames / elapsed, 1) if elapsed > 0 else 0.0,
                   "latency": latency[setting, sessions].summary(),
                   "frames_per_s_rounds": [round(block[0], 3) for block in fps[setting, sessions].rounds]}
            if setting == on:
                row["on_over_off_frames_per_s"] = ratio_interval(fps[on, sessions], fps[off, sessions])
            rows.append(row)
    if peer is not None:
        turns, n = peer["round_robin"], peer["round_robin"]["sessions"]
        # A session's frame latency in turn: its own frame and the other sessions' before it.
        waits = [sum(turns["ms"][i:i + n]) for i in range(len(turns["ms"]) - n + 1)]
        rows.append({"setting": "StreamDiffusion, one stream in turn", "sessions": n,
                     "frames": turns["frames"], "frames_per_s": round(turns["fps"], 1),
                     "latency": Series("StreamDiffusion", waits).summary()})
    results = {**header("load"), "model": config.display_name, "size": "x".join(map(str, config.sizes[0])),
               "seconds": seconds, "rounds": rounds, "window_s": round(window_s, 4), "rows": rows}
    save(results, markdown(results), output)
    load_curves(rows, output / "load.png",
                f"{config.display_name} {results['size']}, 1 step: throughput and p99 against sessions")
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, closed loop; batching on and off interleaved in "
             f"{r['rounds']} rounds of {r['window_s']} s windows per row; frames/s = frames completed / elapsed "
             f"time (window start to the last frame's arrival); {machine_line(m)}.", "",
             "| setting | sessions | frames | elapsed s | frames/s (all sessions) | p50 ms | p99 ms | "
             "on / off frames/s (95% interval) |", "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        ratio = row.get("on_over_off_frames_per_s")
        interval = f"{ratio['ratio']}x ({ratio['low']}-{ratio['high']})" if ratio else "–"
        lines.append(f"| {row['setting']} | {row['sessions']} | {row['frames']} | {row.get('elapsed_s', '–')} | "
                     f"{row['frames_per_s']} | {row['latency']['p50_ms']} | {row['latency']['p99_ms']} | "
                     f"{interval} |")
    return "\n".join(lines) + "\n"
