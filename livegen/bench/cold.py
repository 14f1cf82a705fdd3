"""`livegen bench cold`: from process start to ready, and a new connection's first frame.

Each run starts `python -m livegen serve` as a fresh process and times it to the first 200 from
/readyz (imports, load, warm-up at every served size, image and speech models). The runs share a
cache folder that starts empty: the first is a first start on this machine, the others read what
it kept (exported and cut graphs, speech timings). A new connection then asks for one frame
with a prompt the server has never seen. The same connection then warms the cached prompt with
one frame and runs interleaved rounds, each one frame with the cached prompt and one frame with
a prompt never seen before, so both warm medians come from the same run, side by side. The first
frame after ready is reported against both: the new-prompt median (the same work: a prompt to
encode and moderate) and the cached-prompt median (the warm headline). Speech the same way: the
time to first audio of the connection's first reply, against the median of the replies after it.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from rich.progress import Progress

from livegen.bench.report import Rounds, Series, header, machine_line, ratio_interval, save
from livegen.bench.speech import stream
from livegen.client import AsyncClient
from livegen.config import ModelConfig
from livegen.server.background import ServeProcess

PROMPT = "a smiling cat"  # the warm bench's prompt
# The first frame and reply have the same work as the new-prompt frames and later replies they are
# held against: texts of one template, a number apart (one token, one syllable). Until 2026-12-03 the
# first was a longer text of its own, which the first reply's 1.17-1.19x owed most of: the same
# sentence first and later took 1.03x (median of five servers).
NEW_PROMPT = PROMPT + ", new prompt {}"
REPLY = "Reply number {}."
WARM_REPLIES = 5


async def first_and_warm(url: str, frames: int) -> tuple[float, Rounds, Rounds, float, list[float]]:
    """The first frame on a new connection, then `frames` rounds of (cached prompt, new prompt);
    then the first reply's time to audio and that of the replies after it."""
    cached, new = Rounds("warm, cached prompt"), Rounds("warm, a new prompt every frame")

    async def timed(client: AsyncClient, prompt: str) -> float:
        started = time.perf_counter()
        await client.generate(prompt)
        return (time.perf_counter() - started) * 1000

    async with AsyncClient(url) as client:
        first_ms = await timed(client, NEW_PROMPT.format(0))
        await timed(client, PROMPT)  # the cached prompt's first (uncached) use is not a cached frame
        for i in range(1, frames + 1):
            cached.rounds.append([await timed(client, PROMPT)])
            new.rounds.append([await timed(client, NEW_PROMPT.format(i))])
        # From sending a reply to its first piece of audio, as the speech bench times a stream.
        first_audio = (await stream(client, REPLY.format(WARM_REPLIES + 1)))["first_chunk_ms"]
        warm_audio = [(await stream(client, REPLY.format(i)))["first_chunk_ms"] for i in range(1, WARM_REPLIES + 1)]
    return first_ms, cached, new, first_audio, warm_audio


def one_cold_start(config: ModelConfig, frames: int, cache: Path) -> dict:
    kept = any(cache.iterdir())
    started = time.perf_counter()
    server = ServeProcess.serving(config, env={"LIVEGEN_CACHE_DIR": str(cache)})
    ready_s = time.perf_counter() - started
    try:
        first_ms, cached, new, first_audio, warm_audio = asyncio.run(first_and_warm(server.ws_url, frames))
    finally:
        server.kill()
    new_p50, cached_p50 = statistics.median(new.series().ms), statistics.median(cached.series().ms)
    return {"cache": "kept" if kept else "empty", "start_to_ready_s": round(ready_s, 2),
            "first_frame_ms": round(first_ms, 2),
            "warm_rounds": frames,
            "warm_new_prompt_p50_ms": round(new_p50, 2), "warm_cached_p50_ms": round(cached_p50, 2),
            "first_over_warm_new_prompt": round(first_ms / new_p50, 2),
            "first_over_warm_cached": round(first_ms / cached_p50, 2),
            "new_over_cached": ratio_interval(new, cached),
            "first_audio_ms": round(first_audio, 1), "warm_audio_p50_ms": round(statistics.median(warm_audio), 1),
            "first_audio_over_warm": round(first_audio / statistics.median(warm_audio), 2)}


def run(config: ModelConfig, runs: int, frames: int, output: Path) -> dict:
    rows = []
    with Progress() as progress, tempfile.TemporaryDirectory(prefix="livegen-cache-") as cache:
        task = progress.add_task("cold starts", total=runs)
        for _ in range(runs):
            rows.append(one_cold_start(config, frames, Path(cache)))
            progress.advance(task)
    ready = Series("start to ready, cache kept", [row["start_to_ready_s"] * 1000 for row in rows
                                                  if row["cache"] == "kept"] or [rows[0]["start_to_ready_s"] * 1000])
    results = {**header("cold"), "model": config.display_name, "size": "x".join(map(str, config.sizes[0])),
               "runs": rows, "start_to_ready": ready.summary(),
               **{f"{key}_median": round(statistics.median(r[key] for r in rows), 2)
                  for key in ("first_over_warm_new_prompt", "first_over_warm_cached", "first_audio_over_warm")}}
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, `python -m livegen serve` started {len(r['runs'])} "
             f"times, image and speech models warm at ready; {machine_line(m)}. The first frame after ready has a prompt the server has not seen, of the new prompts' template (the first reply too, of the later replies'); "
             f"both warm medians are measured on the same connection right after it, in interleaved rounds "
             f"(one cached-prompt frame, one new-prompt frame; {r['runs'][0]['warm_rounds']} rounds).", "",
             "| run | cache folder | start to ready s | first frame ms | warm p50 ms, cached prompt | first / cached | "
             "warm p50 ms, new prompt every frame | first / new prompt | new / cached (95% interval) | "
             "first reply to audio ms | later replies p50 ms | first / later |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(r["runs"], 1):
        ratio = row["new_over_cached"]
        lines.append(f"| {i} | {row['cache']} | {row['start_to_ready_s']} | {row['first_frame_ms']} | {row['warm_cached_p50_ms']} | "
                     f"{row['first_over_warm_cached']}x | {row['warm_new_prompt_p50_ms']} | "
                     f"{row['first_over_warm_new_prompt']}x | {ratio['ratio']}x ({ratio['low']}-{ratio['high']}) | "
                     f"{row['first_audio_ms']} | {row['warm_audio_p50_ms']} | {row['first_audio_over_warm']}x |")
    lines += ["", f"Start to ready with the cache folder kept: **{r['start_to_ready']['p50_ms'] / 1000:.2f} s** "
              f"(median); a first start on this machine: {r['runs'][0]['start_to_ready_s']} s.",
              "", f"Median over runs: the first frame is **{r['first_over_warm_cached_median']}x** the cached-prompt "
              f"warm median and {r['first_over_warm_new_prompt_median']}x the new-prompt warm median. The first "
              f"reply's time to audio is **{r['first_audio_over_warm_median']}x** that of the {WARM_REPLIES} replies after it."]
    return "\n".join(lines) + "\n"
