"""`livegen bench interactive`: a slider dragged at 30 inputs per second, as the playground sends it.

A JSON WebSocket session (the page's codec) sends `generate` inputs on a fixed 30 Hz clock for a
fixed time, sweeping the prompt-blend slider between two cached prompts. Two ways to send:
- raw: every input goes out at once; the server's latest-wins slot drops stale ones (`superseded`);
- page: the playground's throttle, at most three inputs unanswered and the newest waiting in the page.

Measured by the client, from the moment the slider produced each input: the latency of each
delivered frame, and, for every input, the time until a frame for it or a newer input reached
the screen ("input to screen"); frames delivered per second, over the elapsed time from the
first input to the last outcome (frames still arrive after the slider stops); the share of inputs
superseded (server) or dropped (page). Frames come back in livegen's default format (JPEG q85),
as they do in the page.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.progress import Progress

from livegen.bench.report import Series, header, machine_line, save
from livegen.client import AsyncClient
from livegen.config import ModelConfig, Settings
from livegen.protocol import Error, Frame, Superseded
from livegen.server.background import BackgroundServer

RATE_HZ = 30
PAGE_IN_FLIGHT = 3  # the playground's LivegenClient default
PROMPTS = ("a smiling cat", "a red apple")
FORMAT, QUALITY = "jpeg", 85  # livegen's default output, what the page receives


async def drive(url: str, seconds: float, steps: int, max_in_flight: int | None,
                progress: Progress | None = None) -> dict:
    """Send at RATE_HZ for `seconds`, then wait for every outcome; return the measurements."""
    created_at: dict[int, float] = {}  # when the slider moved: latency counts from here
    sent_at: dict[int, float] = {}
    frames: list[tuple[int, float, dict]] = []  # (input number, received at, timings)
    superseded = dropped = errors = 0
    in_flight: set[int] = set()
    waiting: dict | None = None
    total = round(seconds * RATE_HZ)
    task = progress.add_task(f"{RATE_HZ} Hz, {'page throttle' if max_in_flight else 'raw'}", total=total) \
        if progress else None

    async with AsyncClient(url, codec="json") as client:

        async def transmit(fields: dict) -> None:
            number = fields.pop("number")
            in_flight.add(number)
            sent_at[number] = time.perf_counter()
            await client.send(PROMPTS[0], id=str(number), format=FORMAT, quality=QUALITY, **fields)

        async def receive() -> None:
            nonlocal superseded, errors, waiting
            while len(in_flight) or len(sent_at) < total - dropped:
                outcome = await client.receive()
                number = int(outcome.id)
                in_flight.discard(number)
                if isinstance(outcome, Frame):
                    frames.append((number, time.perf_counter(), outcome.timings))
                    assert outcome.format == FORMAT, outcome
                elif isinstance(outcome, Superseded):
                    superseded += 1
                elif isinstance(outcome, Error):
                    errors += 1
                if waiting is not None and len(in_flight) < (max_in_flight or 1):
                    fields, waiting = waiting, None
                    await transmit(fields)

        receiver = asyncio.create_task(receive())
        started = time.perf_counter()
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / RATE_HZ - time.perf_counter()))
            created_at[i] = time.perf_counter()
            fields = {"number": i, "blend_prompt": PROMPTS[1], "blend": (i % 61) / 60, "steps": steps}
            if max_in_flight is None or len(in_flight) < max_in_flight:
                await transmit(fields)
            else:
                if waiting is not None:
                    dropped += 1
                waiting = fields
            if task is not None:
                progress.advance(task)  # type: ignore[union-attr]
        sending_s = time.perf_counter() - started
        await asyncio.wait_for(receiver, 60)
        elapsed_s = time.perf_counter() - started  # to the last outcome: frames still arrive after sending stops

    delivered = Series("delivered frame latency",
                       [(at - created_at[n]) * 1000 for n, at, _ in frames])
    # Every input is on screen once a frame for it or a newer input has arrived.
    to_screen = Series("input to screen")
    shown = sorted((n, at) for n, at, _ in frames)
    for number, created in created_at.items():
        first = min((at for n, at in shown if n >= number), default=None)
        if first is not None:
            to_screen.ms.append((first - created) * 1000)
    stages = {key: round(sorted(t[key] for _, _, t in frames)[len(frames) // 2], 2) for key in frames[0][2]}
    return {
        "mode": "page throttle" if max_in_flight else "raw",
        "inputs": total, "seconds": round(sending_s, 2), "inputs_per_s": round(total / sending_s, 1),
        "elapsed_s": round(elapsed_s, 3), "frames": len(frames), "frames_per_s": round(len(frames) / elapsed_s, 1),
        "superseded": superseded, "dropped_in_client": dropped, "errors": errors,
        "share_superseded": round((superseded + dropped) / total, 3),
        "frame_latency": delivered.summary(), "input_to_screen": to_screen.summary(),
        "server_stages_p50_ms": stages,
    }


def run(config: ModelConfig, seconds: float, steps: int, output: Path) -> dict:
    server = BackgroundServer(Settings(models=[config]))
    try:
        with Progress() as progress:
            runs = [asyncio.run(drive(server.ws_url, seconds, steps, mode, progress))
                    for mode in (None, PAGE_IN_FLIGHT)]
    finally:
        server.stop()
    results = {
        **header("interactive"),
        "model": config.display_name, "size": "x".join(map(str, config.sizes[0])), "steps": steps, "rate_hz": RATE_HZ,
        "format": f"{FORMAT.upper()} q{QUALITY}", "runs": runs,
    }
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, {r['steps']} step(s), inputs at {r['rate_hz']} Hz, frames as "
             f"{r['format']}; frames/s = frames / elapsed time, first input to last outcome; {machine_line(m)}.", "",
             "| sending | inputs | frames in elapsed s | frames/s | superseded | frame latency p50 / p95 ms | "
             "input to screen p50 / p95 ms | server total p50 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for run in r["runs"]:
        f, s = run["frame_latency"], run["input_to_screen"]
        lines.append(f"| {run['mode']} | {run['inputs']} in {run['seconds']} s | "
                     f"{run['frames']} in {run['elapsed_s']} s | {run['frames_per_s']} | "
                     f"{run['share_superseded']:.0%} | {f['p50_ms']} / {f['p95_ms']} | "
                     f"{s['p50_ms']} / {s['p95_ms']} | {run['server_stages_p50_ms'].get('total_ms')} |")
    return "\n".join(lines) + "\n"
