"""`livegen bench warm`: one session's warm frames, livegen against what people would use instead, interleaved.

Every system runs as its own warm worker process (torch threads of one never slow another), all
speaking one protocol of JSON lines on stdin/stdout:
  worker -> {"ready": true, "warmup_calls": n, "settings": {...}}, once loaded and warm;
  {"cmd": "frames", "prompts": [...]} -> {"ms": [...]}: one frame per prompt, each timed with its encode
  (JPEG quality 85 for every system, livegen's default);
  {"cmd": "picture", "prompt": p, "seed": s} -> {"png_b64": ...}: the model's picture for that noise seed;
  {"cmd": "quit"}.
The driver runs rounds: in each, every row gets a block of frames, in an order rotated by one each
round (A, B, C, then B, C, A, ...), so drift on a noisy machine hits every row alike. A row is a
system with the cached prompt, or with a new prompt every frame (the same list for every system).
Each row reports p50/p95 and its ratio to livegen over the WebSocket (same prompt mode) with a 95%
bootstrap interval over rounds. Systems:
- livegen over WebSocket (server on loopback, Python client), and the engine in-process;
- the direct diffusers call as people call it: `pipe(prompt, num_inference_steps=1)`, or with
  precomputed `prompt_embeds` for the cached prompt;
- the same call tuned with public speed-ups: channels-last UNet and VAE, the UNet run by a
  `torch.jit.trace` (diffusers' documented recipe);
- StreamDiffusion `txt2img()` (bench/streamdiffusion.py's persistent worker), with `--peers`;
- the naive server (bench/naive.py): HTTP per frame with the student warm, in the rounds; the
  teacher at 50 steps and serverless are too slow for rounds and run after them, fewer frames.
Then pixel checks: the same seed and prompt asked of livegen (watermark off), the direct calls and
StreamDiffusion (asked for the concept name livegen draws the prompt as, where the model has a
concept index), pictures compared (max abs difference, PSNR).

Writes warm.json, warm.md and latency-cdf.png (one curve per row).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from livegen.bench.naive import bench_naive
from livegen.bench.plots import latency_cdf
from livegen.bench.report import Rounds, Series, header, machine_line, ratio_interval, save
from livegen.config import ModelConfig
from livegen.models.embedded import reads_real_tokens, real_token_embeds, repeat_tokens

PROMPT = "a smiling cat"
# New prompts: every system gets the same sequence; the number keeps each one unseen, so no cache hits.
NEW_PROMPTS = ("a red fox in the snow", "a blue car", "a slice of pizza", "a green tree", "a yellow star",
               "a rocket", "a red apple", "a happy dog", "a cup of coffee", "a sailing boat")
WARMUP = 10  # calls after loading, in every worker: StreamDiffusion's wrapper default
JPEG_QUALITY = 85
NAIVE_FRAMES = 10  # the teacher's 50 steps take seconds a frame on a CPU
CHECK_SEED = 7
QUICK = {"rounds": 3, "block": 1, "slow_frames": 0, "warmup": 2}  # smoke test, not figures: no slow rows


def new_prompts(start: int, count: int) -> list[str]:
    return [f"{NEW_PROMPTS[n % len(NEW_PROMPTS)]}, number {n}" for n in range(start, start + count)]


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def engine_frames(engine, frames: int, prompt: str, name: str,
                        image: bytes | None = None) -> tuple[Series, list[dict]]:
    """One session on a started engine, frames one after another: latency and each frame's timings
    (image-to-image from `image` if given)."""
    from livegen.protocol import Frame, Generate

    series, timings = Series(name), []
    session = engine.open_session()
    try:
        for i in range(frames):
            started = time.perf_counter()
            await engine.submit(session, Generate(id=str(i), prompt=prompt, image=image))
            outcome = await session.next_outcome()
            assert isinstance(outcome, Frame), outcome
            series.ms.append((time.perf_counter() - started) * 1000)
            timings.append(outcome.timings)
    finally:
        engine.close_session(session)
    return series, timings


def stage_medians(timings: list[dict]) -> dict[str, float]:
    return {stage: round(statistics.median(t[stage] for t in timings), 2) for stage in timings[0]}


# ---------------------------------------------------------------- the systems, inside their workers


class System:
    """Loads and warms in start(); frame() returns the server's stage timings where it has them."""

    settings: dict = {}
    warmup = WARMUP

    async def start(self) -> None:
        # Both paths warm: the cached prompt, and prompts of their own (not the rounds') for the new-prompt path.
        for i in range(self.warmup):
            await self.frame(PROMPT if i % 2 else f"a warm-up prompt, number {i}")

    async def frame(self, prompt: str) -> dict | None:
        raise NotImplementedError

    async def picture(self, prompt: str, seed: int) -> bytes:
        raise NotImplementedError(f"{type(self).__name__} draws no pictures")

    async def stop(self) -> None:
        pass


class WebSocket(System):
    def __init__(self, config: ModelConfig):
        from livegen.config import Settings

        self.config, self.stack = config, contextlib.AsyncExitStack()
        self.app_settings = Settings(models=[config])

    async def start(self) -> None:
        from livegen.client import AsyncClient
        from livegen.server.background import BackgroundServer

        self.server = BackgroundServer(self.app_settings)
        self.client = await self.stack.enter_async_context(AsyncClient(self.server.ws_url))
        self.settings = livegen_settings(self.app_settings, "livegen server on loopback, livegen.client.AsyncClient")
        await super().start()

    async def frame(self, prompt: str) -> dict:
        return (await self.client.generate(prompt)).timings

    async def stop(self) -> None:
        await self.stack.aclose()
        self.server.stop()


class InProcess(System):
    def __init__(self, config: ModelConfig):
        from livegen.config import Settings

        self.app_settings, self.frames, self.plain = Settings(models=[config]), 0, None

    async def start(self) -> None:
        from livegen.engine import Engine

        self.engine = Engine(self.app_settings)
        await self.engine.start()
        self.session = self.engine.open_session()
        self.settings = livegen_settings(self.app_settings, "livegen.engine.Engine in the same process")
        await super().start()

    async def frame(self, prompt: str) -> dict:
        return (await self.generate(self.engine, self.session, prompt)).timings

    async def generate(self, engine, session, prompt: str, **fields):
        from livegen.protocol import Frame, Generate

        self.frames += 1
        await engine.submit(session, Generate(id=str(self.frames), prompt=prompt, **fields))
        outcome = await session.next_outcome()
        assert isinstance(outcome, Frame), outcome
        return outcome

    async def picture(self, prompt: str, seed: int) -> bytes:
        from livegen.engine import Engine

        if self.plain is None:  # the watermark changes pixels on purpose: the check compares the model's
            safety = self.app_settings.safety.model_copy(update={"watermark": False})
            self.plain = Engine(self.app_settings.model_copy(update={"safety": safety}))
            await self.plain.start()
            self.plain_session = self.plain.open_session()
        return (await self.generate(self.plain, self.plain_session, prompt, seed=seed, format="png")).image

    async def stop(self) -> None:
        for engine in (self.engine, self.plain):
            if engine is not None:
                await engine.stop()


class Direct(System):
    """diffusers as its users call it; tuned: channels-last, a traced UNet and the text encoder in
    onnxruntime (livegen's own on the CPU, models/onnx_text.py), public means only."""

    def __init__(self, config: ModelConfig, tuned: bool):
        self.config, self.tuned = config, tuned

    async def start(self) -> None:
        import torch

        from livegen.bench.naive import _load
        from livegen.models.onnx_text import OnnxTextEncoder, exported_graph

        self.pipe = _load(Path(self.config.source))
        if self.tuned:
            self.pipe.unet.to(memory_format=torch.channels_last)
            self.pipe.vae.to(memory_format=torch.channels_last)
            self.pipe.unet = TracedUNet(self.pipe.unet)
            self.text = OnnxTextEncoder(exported_graph(self.pipe.text_encoder), torch.get_num_threads())
        # A folder whose livegen.json says so was trained to read the prompt's real tokens: the
        # cached and tuned rows read it that way (the same picture as livegen's); `pipe(prompt)` pads it.
        self.real_tokens = reads_real_tokens(Path(self.config.source))
        # The cached row: the prompt encoded once, its prompt_embeds passed to every call. Without
        # no_grad they would require grad, and TorchScript would specialize a second graph for them.
        with torch.no_grad():
            self.cached = {PROMPT: real_token_embeds(self.pipe.tokenizer, self.pipe.text_encoder, [PROMPT])
                           if self.real_tokens else self.pipe.encode_prompt(PROMPT, self.pipe.device, 1, False)[0]}
        width, height = self.config.sizes[0]
        self.call = {"num_inference_steps": 1, "guidance_scale": self.config.guidance or 0.0,
                     "width": width, "height": height}
        self.settings = {"call": f"pipe(prompt or prompt_embeds, {', '.join(f'{k}={v}' for k, v in self.call.items())})",
                         "channels_last": self.tuned, "unet": "torch.jit.trace" if self.tuned else "eager",
                         "text_encoder": "onnxruntime" if self.tuned else "eager",
                         "encode": f"JPEG quality {JPEG_QUALITY}"}
        await super().start()

    def image(self, prompt: str, **kwargs) -> Image.Image:
        import torch

        embeds = self.cached.get(prompt)
        if embeds is None and self.tuned:  # by onnxruntime: the real tokens alone, or padded as encode_prompt does
            tokenizer = self.pipe.tokenizer
            ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt")
            words = ids.input_ids[:, : int(ids.attention_mask.sum())] if self.real_tokens else ids.input_ids
            embeds = self.text(words, words.new_ones(words.shape))
            if self.real_tokens:
                embeds = repeat_tokens(embeds, torch.tensor([words.shape[1]]))
        text = {"prompt": prompt} if embeds is None else {"prompt_embeds": embeds}
        return self.pipe(**text, **self.call, **kwargs).images[0]

    async def frame(self, prompt: str) -> None:
        jpeg(self.image(prompt))

    async def picture(self, prompt: str, seed: int) -> bytes:
        import torch

        return png(self.image(prompt, generator=torch.Generator().manual_seed(seed)))


class TracedUNet:
    """diffusers' documented tracing recipe: the UNet's forward traced once per input shape and
    replayed; everything else (config, dtype, device) is the UNet's."""

    def __init__(self, unet):
        self.unet, self.traces = unet, {}

    def __getattr__(self, name: str):
        return getattr(self.unet, name)

    def __call__(self, sample, timestep, encoder_hidden_states, timestep_cond=None, return_dict=True, **unused):
        import torch

        assert not any(v is not None for v in unused.values()), unused
        inputs = (sample, torch.as_tensor(timestep), encoder_hidden_states,
                  *([] if timestep_cond is None else [timestep_cond]))
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self.traces:
            self.traces[key] = self.trace(inputs)
        return (self.traces[key](*inputs),)

    def trace(self, inputs: tuple):
        import torch

        class Positional(torch.nn.Module):  # tracing takes positional tensors
            def __init__(self, unet):
                super().__init__()
                self.unet = unet

            def forward(self, sample, t, text, *cond):
                return self.unet(sample, t, text, timestep_cond=cond[0] if cond else None, return_dict=False)[0]

        with warnings.catch_warnings():  # shape checks becoming constants: expected
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return torch.jit.trace(Positional(self.unet), inputs, check_trace=False)


class NaiveStudent(System):
    def __init__(self, config: ModelConfig):
        self.config = config

    async def start(self) -> None:
        import httpx

        from livegen.bench.naive import naive_app
        from livegen.server.background import LoopbackServer

        self.server = LoopbackServer(naive_app(Path(self.config.source), None, *self.config.sizes[0]))
        self.client = httpx.Client(base_url=self.server.url, timeout=600)
        self.settings = {"server": "FastAPI under uvicorn on loopback, one HTTP POST per frame",
                         "call": "pipe(prompt, num_inference_steps=1) per request",
                         "encode": f"JPEG quality {JPEG_QUALITY}"}
        await super().start()

    async def frame(self, prompt: str) -> None:
        self.client.post("/student", json={"prompt": prompt, "guidance": self.config.guidance or 0.0}).raise_for_status()

    async def stop(self) -> None:
        self.client.close()
        self.server.stop()


def livegen_settings(settings, transport: str) -> dict:
    return {"transport": transport, "warmup_runs_per_size": settings.warmup_runs,
            "unet": "channels-last; run by TorchScript traces on a CPU", "encode": f"JPEG quality {JPEG_QUALITY} (default)",
            "safety": settings.safety.model_dump(include={"moderation", "watermark", "output_checker"})}


SYSTEMS = {"websocket": WebSocket, "engine": InProcess, "direct": lambda c: Direct(c, tuned=False),
           "direct_tuned": lambda c: Direct(c, tuned=True), "naive_student": NaiveStudent}


async def serve(system: System, out) -> None:
    def send(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    await system.start()
    send({"ready": True, "warmup_calls": system.warmup, "settings": system.settings})
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        message = json.loads(line)
        if message["cmd"] == "quit":
            break
        if message["cmd"] == "picture":
            send({"png_b64": base64.b64encode(await system.picture(message["prompt"], message["seed"])).decode()})
            continue
        ms, stages = [], []
        for prompt in message["prompts"]:
            started = time.perf_counter()
            timings = await system.frame(prompt)
            ms.append((time.perf_counter() - started) * 1000)
            if timings:
                stages.append(timings)
        send({"ms": ms, **({"stages": stages} if stages else {})})
    await system.stop()


def worker_main(system: str, config_json: str, warmup: str) -> None:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the protocol
    worker = SYSTEMS[system](ModelConfig.model_validate_json(config_json))
    worker.warmup = int(warmup)
    asyncio.run(serve(worker, out))


# ---------------------------------------------------------------- the driver


class Worker:
    """A warm worker process, driven over the JSON-lines protocol."""

    def __init__(self, command: list[str], log: Path):
        self.log = log
        with log.open("w") as stderr:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True)
        self.ready: dict | None = None

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args} exited ({self.process.wait()}): see {self.log}")
        return json.loads(line)

    def wait_ready(self) -> dict:
        self.ready = self.ready or self.receive()
        return self.ready

    def ask(self, **message) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self.receive()

    def picture(self, prompt: str, seed: int) -> bytes:
        return base64.b64decode(self.ask(cmd="picture", prompt=prompt, seed=seed)["png_b64"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def livegen_worker(system: str, config: ModelConfig, output: Path, warmup: int) -> Worker:
    return Worker([sys.executable, "-m", "livegen.bench.warm", system, config.model_dump_json(), str(warmup)],
                  output / f"warm-worker-{system}.log")


def streamdiffusion_worker(python: Path, config: ModelConfig) -> Worker:
    from livegen.bench.streamdiffusion import PeerProcess  # the same protocol, in StreamDiffusion's venv

    return PeerProcess(python, Path(config.source), *config.sizes[0])


# (key, worker, prompt mode, label); each key is one row of the table and one slot of the rotation.
ROWS = [
    ("livegen", "websocket", "cached", "livegen over WebSocket"),
    ("livegen_new_prompt", "websocket", "new", "livegen over WebSocket"),
    ("livegen_engine", "engine", "cached", "livegen engine, in-process"),
    ("livegen_engine_new_prompt", "engine", "new", "livegen engine, in-process"),
    ("direct", "direct", "cached", "direct diffusers call, precomputed prompt_embeds"),
    ("direct_new_prompt", "direct", "new", "direct diffusers call, `pipe(prompt)`"),
    ("direct_tuned", "direct_tuned", "cached", "direct call tuned (channels-last, traced UNet, onnxruntime text encoder)"),
    ("direct_tuned_new_prompt", "direct_tuned", "new", "direct call tuned (channels-last, traced UNet, onnxruntime text encoder)"),
    ("naive_student", "naive_student", "new", "naive server, student 1 step warm, HTTP per frame"),
]
PEER_ROWS = [("streamdiffusion", "streamdiffusion", "cached", "StreamDiffusion `txt2img()`"),
             ("streamdiffusion_new_prompt", "streamdiffusion", "new", "StreamDiffusion `update_prompt` + `txt2img()`")]
BASELINE = {"cached": "livegen", "new": "livegen_new_prompt"}


def rotation(keys: list[str], round_index: int) -> list[str]:
    shift = round_index % len(keys)
    return keys[shift:] + keys[:shift]


def drawn_text(model: Path, prompt: str) -> str:
    """The text livegen conditions the model's picture on: with a concept index (models/concepts.py)
    its nearest concept's name, so the pixel checks ask the peers for one and the same conditioning."""
    from livegen.models.concepts import Concepts
    from livegen.safety.moderation import minilm_embedder

    concepts = Concepts.read(model)
    return prompt if concepts is None else concepts.drawn_text(prompt, minilm_embedder())


def compare(a: bytes, b: bytes) -> dict:
    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), np.float64)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.float64)
    mse = float(np.mean((x - y) ** 2))
    return {"max_abs_diff": int(np.abs(x - y).max()), "mean_abs_diff": round(float(np.abs(x - y).mean()), 3),
            "psnr_db": None if mse == 0 else round(10 * math.log10(255**2 / mse), 2)}


def run(config: ModelConfig, rounds: int, block: int, output: Path, peer_python: Path | None = None,
        slow_frames: int = NAIVE_FRAMES, warmup: int = WARMUP) -> dict[str, object]:
    width, height = config.sizes[0]
    output.mkdir(parents=True, exist_ok=True)
    rows = ROWS + (PEER_ROWS if peer_python else [])
    workers: dict[str, Worker] = {}
    try:
        for _, name, _, _ in rows:  # all start at once; each warms itself before it says ready
            if name not in workers:
                workers[name] = (streamdiffusion_worker(peer_python, config) if name == "streamdiffusion"
                                 else livegen_worker(name, config, output, warmup))
        ready = {name: worker.wait_ready() for name, worker in workers.items()}
        samples = {key: Rounds(f"{label}, {'cached prompt' if mode == 'cached' else 'new prompt'}")
                   for key, _, mode, label in rows}
        order, stages = [], {"livegen": [], "livegen_new_prompt": []}
        with Progress() as progress:
            task = progress.add_task("warm: interleaved rounds", total=rounds)
            for r in range(rounds):
                order.append(rotation([key for key, *_ in rows], r))
                fresh = new_prompts(r * block, block)  # this round's new prompts, the same for every row
                for key in order[-1]:
                    _, name, mode, _ = next(row for row in rows if row[0] == key)
                    if mode == "cached":  # untimed: a system that keeps one prompt switches back to it here
                        workers[name].ask(cmd="frames", prompts=[PROMPT])
                    answer = workers[name].ask(cmd="frames", prompts=[PROMPT] * block if mode == "cached" else fresh)
                    samples[key].rounds.append(answer["ms"])
                    stages.get(key, []).extend(answer.get("stages", []))
                progress.advance(task)
        drawn = drawn_text(Path(config.source), PROMPT)  # what livegen draws for PROMPT: asked of the peers
        pictures = {name: workers[name].picture(PROMPT if name == "engine" else drawn, CHECK_SEED)
                    for name in ("engine", "direct", "direct_tuned", "streamdiffusion") if name in workers}
    finally:
        for worker in workers.values():
            worker.close()
    for name, data in pictures.items():
        (output / f"warm-picture-{name}.png").write_bytes(data)
    # Too slow for rounds: after them, fewer frames, here, now that every worker has quit.
    naive = bench_naive(Path(config.source), output / "naive-teacher", width, height, slow_frames, PROMPT,
                        config.guidance or 0.0) if slow_frames else {}

    def row(label: str, mode: str, series: Series, over: dict, interleaved: bool) -> dict:
        return {"label": label, "mode": mode, "interleaved": interleaved, **series.summary(),
                "fps": round(1000 / statistics.fmean(series.ms), 1), "over_livegen": over}

    systems = {key: row(label, mode, samples[key].series(), ratio_interval(samples[key], samples[BASELINE[mode]]),
                        True) for key, _, mode, label in rows}
    livegen_new = samples["livegen_new_prompt"].series()
    for key, series in (("naive_teacher", naive.get("teacher")), ("serverless", naive.get("serverless"))):
        if series is None:
            continue
        over = {"ratio": round(statistics.median(series.ms) / statistics.median(livegen_new.ms), 4)}
        systems[key] = row(series.name, "new", series, over, False)
    checks = [{"a": "engine", "b": other, **compare(pictures["engine"], pictures[other])}
              for other in ("direct", "direct_tuned", "streamdiffusion") if other in pictures]
    results = {
        **header("warm"),
        "model": config.display_name, "size": f"{width}x{height}", "prompt": PROMPT, "rounds": rounds,
        "block": block, "warmup_calls": {name: r["warmup_calls"] for name, r in ready.items()},
        "settings": {name: r["settings"] for name, r in ready.items()}, "jpeg_quality": JPEG_QUALITY,
        "systems": systems, "order": order, "new_over_cached": ratio_interval(samples["livegen_new_prompt"],
                                                                              samples["livegen"]),
        "rounds_ms": {key: s.rounds for key, s in samples.items()},
        "server_stages_p50_ms": {"cached": stage_medians(stages["livegen"]),
                                 "new": stage_medians(stages["livegen_new_prompt"])},
        "pictures": {"prompt": PROMPT, "drawn": drawn, "seed": CHECK_SEED, "checks": checks},
    }
    save(results, markdown(results), output)
    latency_cdf([samples[key].series() for key in samples] + list(naive.values()),
                output / "latency-cdf.png",
                f"Warm frame latency, {config.display_name} {width}x{height}, 1 step (one session)")
    return results


def interval(over: dict) -> str:
    if "low" not in over:
        return f"{over['ratio']:.2f}x (not interleaved)"
    return f"{over['ratio']:.2f}x ({over['low']:.2f}-{over['high']:.2f})"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Model `{r['model']}`, {r['size']}, 1 step, one session; {machine_line(m)}. {r['rounds']} interleaved "
             f"rounds of {r['block']} frames per row, the order rotated each round (A, B, C, then B, C, A, ...); each "
             f"system in its own warm process, warmed before the first round ("
             f"{', '.join(f'{k} {v}' for k, v in r['warmup_calls'].items())} calls, cached and new prompts). "
             f"Each cached block follows one untimed frame of the cached prompt, so a system that keeps one prompt "
             f"(StreamDiffusion) is not charged for switching back from its new-prompt row. "
             f"Every frame is timed with its encode, JPEG quality {r['jpeg_quality']} for every system. The ratio is "
             f"to livegen over WebSocket with the same prompt mode, with a 95% bootstrap interval over rounds.", "",
             "| system | prompt | p50 ms | p95 ms | frames/s | p50 vs livegen (95% interval) |",
             "|---|---|---|---|---|---|"]
    for s in r["systems"].values():
        mode = "cached" if s["mode"] == "cached" else "new every frame"
        lines.append(f"| {s['label']} | {mode} | "
                     f"{s['p50_ms']} | {s['p95_ms']} | {s['fps']} | {interval(s['over_livegen'])} |")
    new = r["new_over_cached"]
    stages = {mode: ", ".join(f"{k.removesuffix('_ms')} {v}" for k, v in medians.items())
              for mode, medians in r["server_stages_p50_ms"].items()}
    slow = r["systems"].get("serverless")
    lines += ["", f"The naive teacher (50 steps) and serverless rows ran after the rounds, {slow['n']} frames each: "
                  "too slow to interleave." if slow else "The naive teacher and serverless rows: not run (quick mode).",
              f"livegen over WebSocket, a new prompt against the cached prompt: {interval(new)}.",
              f"Server stages of livegen's cached frames, p50 ms: {stages['cached']}.",
              f"Server stages of livegen's new-prompt frames, p50 ms: {stages['new']}.", "",
              f"Pixel checks, prompt \"{r['pictures']['prompt']}\" (the peers asked for \"{r['pictures']['drawn']}\", "
              f"what livegen draws for it), seed {r['pictures']['seed']} (livegen's "
              "engine with the watermark off, which changes pixels on purpose):", "",
              "| livegen against | max abs difference | mean abs difference | PSNR dB |", "|---|---|---|---|"]
    for c in r["pictures"]["checks"]:
        lines.append(f"| {c['b']} | {c['max_abs_diff']} | {c['mean_abs_diff']} | "
                     f"{'identical' if c['psnr_db'] is None else c['psnr_db']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    worker_main(*sys.argv[1:])
