"""GPU scenarios: real few-step architectures through livegen's own engine and server.

    livegen bench gpu [--quick] [--budget-s 400]    # on a CUDA machine
    livegen bench gpu --cpu                          # the same path with tiny models: a smoke test

The models are the real architectures (SD-Turbo, SDXL-Turbo, LCM on SD 1.5, FLUX.1-schnell) with
RANDOM WEIGHTS (`livegen.models.reference`): compute does not depend on weight values, so the
timings are the real models' timings; the pictures are noise. Every table says so. Per case
(architecture, size, steps, dtype, CUDA graphs / torch.compile / eager, decoder), with what the
graphs covered (`acceleration`):

- one session: text-to-image, frames one after another, the prompt cached as a slider would
  leave it: latency seen by the caller (p50/p95/p99) and the server's stages; then
  image-to-image from a camera-sized JPEG;
- GPU floor (in-process cases): the denoiser and the decoder alone, synchronised, at batch 1 and 8;
- 8 sessions: each sends its next input as soon as its last frame arrives; the engine
  micro-batches them (max_batch 8): aggregate frames/s, p50/p99 latency, mean batch.

A `served` case runs `livegen serve` as a process of its own: process start to the first 200
from /readyz (imports, load, warm-up with graph capture), then the same sessions over the
WebSocket, as a user's client sees them. The other cases drive the engine in-process.

Stage timings are CPU-side: kernels run asynchronously, so GPU time not yet finished when
`denoise` returns is paid inside `decode` (which copies the pixels to the host).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import torch

from livegen.bench.report import Rounds, Series, header, ratio_interval, save
from livegen.bench.streamdiffusion import PeerError, PeerProcess
from livegen.bench.warm import stage_medians
from livegen.client import AsyncClient
from livegen.config import ModelConfig, SafetyConfig, Settings
from livegen.engine import Engine
from livegen.models.base import BatchSpec
from livegen.protocol import Frame, Generate
from livegen.server.background import ServeProcess

PROMPT = "a red fox in the snow, golden hour"
SESSIONS = 8
WEIGHTS = "random (real architecture from the public config; speed does not depend on weight values)"

# One input answered by its frame: (prompt, image for image-to-image or None) -> Frame.
Ask = Callable[[str, bytes | None], Awaitable[Frame]]


@dataclass(frozen=True)
class Case:
    architecture: str  # a livegen.models.reference architecture
    size: int
    steps: int = 1
    compile: bool = False
    graphs: bool = True  # CUDA graphs (the default on CUDA); torch.compile runs without them
    tiny_vae: bool = True
    dtype: str = "float16"
    served: bool = False  # through `livegen serve` and its WebSocket, not the engine in-process
    frames: int | None = None  # at most this many frames per session (slow models)
    estimate_s: float = 60  # rough wall time with a warm cache, to skip what the budget cannot hold

    @property
    def label(self) -> str:
        return (f"{self.architecture} {self.size}x{self.size} {self.steps} step{'s' if self.steps > 1 else ''} "
                f"{self.dtype} {'compile' if self.compile else 'graphs' if self.graphs else 'eager'} "
                f"{'tiny-vae' if self.tiny_vae else 'full-vae'}{' served' if self.served else ''}")


def cases(quick: bool, only: str | None = None) -> list[Case]:
    """In order of importance: the target configuration first, the long compiles last.

    `only`: comma-separated words that a case's label must all contain (e.g. "sdxl,eager").
    """
    chosen = [Case("sd-turbo", 512, estimate_s=50), Case("sd-turbo", 512, served=True, estimate_s=75),  # with the peer
              Case("sd-turbo", 512, graphs=False, estimate_s=30)]
    if not quick:
        chosen += [
            Case("sdxl-turbo", 512, estimate_s=70),
            Case("lcm-sd15", 512, steps=4, estimate_s=45),
            Case("sdxl-turbo", 1024, estimate_s=45),
            Case("sd-turbo", 512, tiny_vae=False, estimate_s=30),
            Case("sdxl-turbo", 512, graphs=False, estimate_s=40),
            Case("sd-turbo", 512, dtype="bfloat16", estimate_s=30),
            # 33 GB to build and load, and a capture per batch size of a 12B transformer at 4,096 tokens.
            Case("flux-schnell", 1024, steps=4, tiny_vae=False, dtype="bfloat16", frames=12, estimate_s=300),
        ]
    chosen.append(Case("sd-turbo", 512, compile=True, graphs=False, estimate_s=240))
    words = [w.strip() for w in (only or "").split(",") if w.strip()]
    return [c for c in chosen if all(w in c.label for w in words)]


# ---------------------------------------------------------------- models on disk

# livegen's tiny pipelines of the same families, for the CPU smoke test: (architecture, sampler).
TINY = {"sd-turbo": ("sd", "turbo"), "sdxl-turbo": ("sdxl", "turbo"), "lcm-sd15": ("sd", "lcm"),
        "flux-schnell": ("flux", "turbo")}


def prepare(case: Case, cache: Path, cpu: bool) -> tuple[Path, Path | None, float]:
    """The pipeline folder (built once per architecture) and its tiny decoder; seconds spent building."""
    started = time.perf_counter()
    if cpu:
        from livegen.models.tiny import build_tiny_pipeline, build_tiny_vae

        folder, tiny = cache / f"tiny-{case.architecture}", cache / "tiny-taesd"
        if not (folder / "model_index.json").is_file():
            build_tiny_pipeline(folder, *TINY[case.architecture])  # type: ignore[arg-type]
        if case.tiny_vae and not (tiny / "config.json").is_file():
            build_tiny_vae(tiny)
    else:
        from livegen.models.reference import build_reference_pipeline, tiny_vae_folder

        folder = build_reference_pipeline(cache / case.architecture, case.architecture,  # type: ignore[arg-type]
                                          tiny_vae=case.tiny_vae)
        tiny = tiny_vae_folder(folder)
    return folder, tiny if case.tiny_vae else None, time.perf_counter() - started


# ---------------------------------------------------------------- measurements


def camera_frame(size: int) -> bytes:
    """A JPEG the size the model serves, as a camera would send: image-to-image's input."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "JPEG", quality=85)
    return encoded.getvalue()


async def one_session(ask: Ask, frames: int, image: bytes | None = None) -> dict:
    """Frames one after another with the same (cached) prompt."""
    series, timings = Series("1 session"), []
    for _ in range(frames):
        started = time.perf_counter()
        frame = await ask(PROMPT, image)
        series.ms.append((time.perf_counter() - started) * 1000)
        timings.append(frame.timings)
    return {**series.summary(), "stages_p50_ms": stage_medians(timings)}


async def many_sessions(asks: list[Ask], seconds: float, min_frames: int = 3) -> dict:
    """Each session sends its next input as soon as its last frame arrives, for `seconds`."""
    latencies, batches = Series(f"{len(asks)} sessions"), []
    started_all = time.perf_counter()
    end = started_all + seconds

    async def client(k: int) -> None:
        i = 0
        while i < min_frames or time.perf_counter() < end:
            started = time.perf_counter()
            frame = await asks[k](f"{PROMPT}, view {k}", None)
            latencies.ms.append((time.perf_counter() - started) * 1000)
            batches.append(frame.batch_size)
            i += 1

    await asyncio.gather(*(client(k) for k in range(len(asks))))
    wall = time.perf_counter() - started_all
    return {**latencies.summary(), "frames_per_s": round(len(latencies.ms) / wall, 1),
            "mean_batch": round(statistics.mean(batches), 2), "wall_s": round(wall, 2)}


async def sessions_phases(asks: list[Ask], frames: int, seconds: float, size: int, result: dict,
                          checkpoint: Callable[[], None]) -> None:
    """One session (text-, then image-to-image), then warm-up and the closed loop of all sessions."""
    result["one_session"] = await one_session(asks[0], frames)
    checkpoint()
    result["one_session_image_to_image"] = await one_session(asks[0], frames, camera_frame(size))
    checkpoint()
    # Warm-up, not measured: a partial batch (with torch.compile, the first batch size other
    # than 1 and 8 compiles a dynamic-shape graph), then full ones.
    started = time.perf_counter()
    await many_sessions(asks[:3], 0.0, min_frames=2)
    await many_sessions(asks, 0.0, min_frames=3)
    result["sessions_warmup_s"] = round(time.perf_counter() - started, 1)
    result[f"sessions_{SESSIONS}"] = await many_sessions(asks, seconds)


def engine_ask(engine: Engine, session, steps: int) -> Ask:
    ids = itertools.count()

    async def ask(prompt: str, image: bytes | None) -> Frame:
        await engine.submit(session, Generate(id=str(next(ids)), prompt=prompt, image=image, steps=steps))
        outcome = await session.next_outcome()
        assert isinstance(outcome, Frame), outcome
        return outcome

    return ask


def client_ask(client: AsyncClient, steps: int) -> Ask:
    async def ask(prompt: str, image: bytes | None) -> Frame:
        return await client.generate(prompt, steps=steps, **({"image": image} if image else {}))

    return ask


def gpu_floor(engine: Engine, size: int, reps: int) -> dict:
    """The denoiser (1 step) and the decoder alone, synchronised: what the engine adds is the rest."""
    runner = next(iter(engine.runners.values()))
    generator = runner.generator
    spec = BatchSpec(size, size, 1, generator.description.default_guidance, None)  # type: ignore[union-attr]
    embedding = runner.encode_prompt(PROMPT)
    sync = torch.cuda.synchronize if generator.device.type == "cuda" else (lambda: None)  # type: ignore[union-attr]
    result = {}
    for batch in (1, SESSIONS):
        noise = torch.cat([runner.make_noise(size, size, seed) for seed in range(batch)])
        denoise_ms, decode_ms = [], []
        for _ in range(reps):
            sync()
            started = time.perf_counter()
            latents = generator.denoise(spec, [embedding] * batch, noise, None, list(range(batch)), lambda: False)
            sync()
            middle = time.perf_counter()
            generator.decode(latents)  # ends with the copy to the host, which synchronises
            done = time.perf_counter()
            denoise_ms.append((middle - started) * 1000)
            decode_ms.append((done - middle) * 1000)
        result[f"batch{batch}"] = {"denoise_ms": round(statistics.median(denoise_ms), 2),
                                   "decode_ms": round(statistics.median(decode_ms), 2)}
    return result


async def measure(config: ModelConfig, case: Case, frames: int, seconds: float, moderation: bool, result: dict,
                  checkpoint: Callable[[], None]) -> None:
    """The engine in-process. Fills `result` part by part, calling `checkpoint` after each (a run cut
    short keeps its parts)."""
    settings = Settings(models=[config], max_batch=SESSIONS, speech=None, safety=SafetyConfig(moderation=moderation))
    engine = Engine(settings)
    started = time.perf_counter()
    await engine.start()
    result["start_to_ready_s"] = round(time.perf_counter() - started, 1)
    result["acceleration"] = engine.acceleration()["bench"]
    runner = next(iter(engine.runners.values()))
    denoiser = getattr(runner.generator.pipe, "unet", None) or getattr(runner.generator.pipe, "transformer", None)  # type: ignore[union-attr]
    if denoiser is not None:
        result["attention"] = sorted({type(p).__name__ for p in denoiser.attn_processors.values()})
    sessions = [engine.open_session() for _ in range(SESSIONS)]
    try:
        await sessions_phases([engine_ask(engine, s, case.steps) for s in sessions], frames, seconds, case.size,
                              result, checkpoint)
        checkpoint()
        # On the runner's own thread: CUDA graphs recorded there are replayed there.
        result["gpu_floor"] = await asyncio.get_running_loop().run_in_executor(
            runner._executor, gpu_floor, engine, case.size, 10 if frames > 20 else 2)
    finally:
        for session in sessions:
            engine.close_session(session)
        await engine.stop()


def serve_args(config: ModelConfig, moderation: bool) -> list[str]:
    """`livegen serve`'s flags for the settings `measure` gives the engine."""
    return ["--device", config.device, "--dtype", config.dtype, "--max-batch", str(SESSIONS), "--no-speech",
            *(["--tiny-vae", config.tiny_vae] if config.tiny_vae else []),
            *([] if config.cuda_graphs else ["--no-cuda-graphs"]), *(["--compile"] if config.compile else []),
            *([] if moderation else ["--no-moderation"])]


async def served_sessions(url: str, case: Case, frames: int, seconds: float, result: dict,
                          checkpoint: Callable[[], None]) -> None:
    clients = [AsyncClient(url) for _ in range(SESSIONS)]
    for client in clients:
        await client.__aenter__()
    try:
        await sessions_phases([client_ask(c, case.steps) for c in clients], frames, seconds, case.size,
                              result, checkpoint)
    finally:
        for client in clients:
            await client.close()


async def against_peer(url: str, peer: PeerProcess, rounds: int, block: int) -> dict:
    """Text-to-image with the cached prompt, in alternating blocks on the same GPU: `block` frames
    over livegen's WebSocket, then `block` from StreamDiffusion (timed in its worker: prompt,
    denoise, decode, JPEG), the order swapped every round."""
    ours, theirs = Rounds("livegen served"), Rounds("StreamDiffusion")
    async with AsyncClient(url) as client:
        await client.generate(PROMPT)
        for round_index in range(rounds):
            for system in (("livegen", "peer") if round_index % 2 == 0 else ("peer", "livegen")):
                if system == "peer":
                    theirs.rounds.append(await asyncio.to_thread(peer.frames, [PROMPT] * block))
                    continue
                block_ms = []
                for _ in range(block):
                    started = time.perf_counter()
                    await client.generate(PROMPT)
                    block_ms.append((time.perf_counter() - started) * 1000)
                ours.rounds.append(block_ms)
    return {"livegen": ours.series().summary(), "streamdiffusion": theirs.series().summary(),
            "streamdiffusion_over_livegen": ratio_interval(theirs, ours), "rounds": rounds, "block": block,
            "settings": peer.ready["settings"], "versions": peer.ready["versions"]}


def measure_served(config: ModelConfig, case: Case, frames: int, seconds: float, moderation: bool, result: dict,
                   checkpoint: Callable[[], None], cache: Path, log: Path, peer_python: Path | None = None) -> None:
    """`livegen serve` as its own process, timed from process start to ready, then over its WebSocket;
    then, with `peer_python`, against StreamDiffusion on the same model (SD-Turbo's kind only)."""
    started = time.perf_counter()
    server = ServeProcess.serving(config, env={"LIVEGEN_CACHE_DIR": str(cache)}, args=serve_args(config, moderation),
                                  log=log)
    result["start_to_ready_s"] = round(time.perf_counter() - started, 1)
    try:
        acceleration = httpx.get(server.url + "/readyz").json().get("acceleration", {})
        result["acceleration"] = next(iter(acceleration.values()), None)
        checkpoint()
        asyncio.run(served_sessions(server.ws_url, case, frames, seconds, result, checkpoint))
        if peer_python is not None and case.architecture == "sd-turbo":
            checkpoint()
            args = ["--device", config.device, "--dtype", config.dtype,
                    *(["--tiny-vae", config.tiny_vae] if config.tiny_vae else [])]
            rounds, block = (2, 2) if config.device == "cpu" else (10, 10)
            try:
                with PeerProcess(peer_python, Path(config.source), case.size, case.size, args=args) as peer:
                    result["streamdiffusion"] = asyncio.run(against_peer(server.ws_url, peer, rounds, block))
            except PeerError as exc:  # the peer failing must not cost livegen's figures
                result["streamdiffusion"] = {"error": str(exc)[-1500:]}
    finally:
        server.kill()


# ---------------------------------------------------------------- the run


def run(output: Path, quick: bool = False, *, cpu: bool = False, cache: Path | None = None,
        budget_s: float | None = None, only: str | None = None, moderation: bool = True,
        peer_python: Path | None = None) -> dict:
    """Measure every case that fits `budget_s`; writes gpu.json and gpu.md to `output` after each case
    (and the served case's server output to serve.log).

    `cpu` runs the same path with livegen's tiny pipelines at 64x64, eager only (a smoke test).
    `moderation=False` where moderation's MiniLM is not installed (the device machine: its 90 MB
    cannot travel there); with a cached prompt it costs a dictionary lookup per frame.
    `peer_python`: a Python with StreamDiffusion (bench/streamdiffusion.py's pins), run against the
    served SD-Turbo case on the same GPU.
    """
    begun = time.perf_counter()
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the smoke test")
    # max-autotune keeps cuBLAS/cuDNN for matrix products and convolutions instead of timing
    # Triton templates for each: the compile then takes minutes, not tens of minutes.
    import torch._inductor.config as inductor

    inductor.max_autotune_gemm_backends = "ATEN"
    inductor.max_autotune_conv_backends = "ATEN"
    cache = cache or Path(tempfile.gettempdir()) / "livegen-gpu-models"
    frames, seconds = (4, 0.0) if cpu else ((60, 2.0) if quick else (200, 4.0))
    results = {
        **header("gpu"),
        "weights": "tiny random pipelines (CPU smoke test, not a measurement)" if cpu else WEIGHTS,
        "tokenizer": "livegen's character-level CLIP tokenizer, padded to the real 77 tokens",
        "attention": "diffusers default processor (torch SDPA)",
        "frames_per_session_max": frames, "seconds_per_scenario": seconds, "max_batch": SESSIONS,
        "moderation": moderation, "peer": str(peer_python) if peer_python else None, "builds_s": {}, "cases": [],
    }
    done: set[str] = set()
    for case in cases(quick, only):
        if cpu:
            if case.compile or not case.graphs:
                continue  # an inductor compile on the CPU takes minutes; without CUDA, graphs change nothing
            case = replace(case, size=64, dtype="float32")
            if case.label in done:
                continue  # a size or dtype of its own on the GPU, the same smoke test here
        done.add(case.label)
        entry: dict = {"label": case.label, **asdict(case)}
        entry.pop("estimate_s")
        spent = time.perf_counter() - begun
        if budget_s is not None and spent + case.estimate_s > budget_s:
            entry["skipped"] = f"time budget: {spent:.0f}s spent of {budget_s:.0f}s, needs ~{case.estimate_s:.0f}s"
            print(f"skip  {case.label}: {entry['skipped']}", flush=True)
            results["cases"].append(entry)
            continue
        print(f"case  {case.label}", flush=True)
        try:
            source, tiny, built_s = prepare(case, cache, cpu)
            if built_s > 1:
                results["builds_s"][case.architecture] = round(built_s, 1)
                print(f"      built {case.architecture} in {built_s:.1f}s", flush=True)
            config = ModelConfig(
                source=str(source), name="bench", device="cpu" if cpu else "cuda", dtype=case.dtype,
                compile=case.compile, cuda_graphs=case.graphs, tiny_vae=str(tiny) if tiny else None,
                sizes=[(case.size, case.size)],
            )
            results["cases"].append(entry)

            def checkpoint() -> None:
                save(results, markdown(results), output)

            count = min(frames, case.frames or frames)
            if case.served:
                measure_served(config, case, count, seconds, moderation, entry, checkpoint, cache / "serve-cache",
                               output / "serve.log", peer_python)
            else:
                asyncio.run(measure(config, case, count, seconds, moderation, entry, checkpoint))
        except Exception as exc:  # one failing case must not cost the others' figures
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
            traceback.print_exc()
        finally:
            gc.collect()
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        entry["case_s"] = round(time.perf_counter() - begun - spent, 1)
        print(f"      {summary_line(entry)}", flush=True)
        if entry not in results["cases"]:
            results["cases"].append(entry)
        results["targets"] = targets(results["cases"], 64 if cpu else 512)
        save(results, markdown(results), output)
    results["total_s"] = round(time.perf_counter() - begun, 1)
    save(results, markdown(results), output)
    return results


def summary_line(entry: dict) -> str:
    if "error" in entry or f"sessions_{SESSIONS}" not in entry:
        return f"ERROR {entry.get('error')}; {entry}"
    one, many = entry["one_session"], entry[f"sessions_{SESSIONS}"]
    return (f"ready {entry['start_to_ready_s']}s; 1 session p50 {one['p50_ms']} p99 {one['p99_ms']} ms; "
            f"{SESSIONS} sessions {many['frames_per_s']} frames/s p99 {many['p99_ms']} ms; "
            f"stages {one['stages_p50_ms']}; floor {entry.get('gpu_floor')}")


def _best(entries: list[dict], architecture: str, size: int, key: Callable[[dict], float | None],
          lowest: bool = True) -> tuple[float | None, str | None]:
    """The best figure at `size` and 1 step, from the served cases if any has it (what a client
    sees over the WebSocket), else from the in-process ones; with the case's label."""
    found = [(value, e["label"]) for e in entries
             if e["architecture"] == architecture and e["size"] == size and e["steps"] == 1
             and (value := key(e)) is not None]
    served = [f for f in found if f[1].endswith("served")]
    pool = served or found
    if not pool:
        return None, None
    return (min if lowest else max)(pool)


def targets(entries: list[dict], size: int = 512) -> dict:
    """Issue 23's targets: SD-Turbo and SDXL-Turbo architectures at 512x512 (the smoke test's 64), 1 step."""
    def p50(part: str) -> Callable[[dict], float | None]:
        return lambda e: e[part]["p50_ms"] if part in e else None

    p50_ms, p50_case = _best(entries, "sd-turbo", size, p50("one_session"))
    image_ms, image_case = _best(entries, "sd-turbo", size, p50("one_session_image_to_image"))
    fps, fps_case = _best(entries, "sd-turbo", size, lambda e: e.get(f"sessions_{SESSIONS}", {}).get("frames_per_s"),
                          lowest=False)
    xl_ms, xl_case = _best(entries, "sdxl-turbo", size, p50("one_session"))
    return {
        "size": size, "sd_turbo_p50_ms": p50_ms, "sd_turbo_p50_case": p50_case,
        "sd_turbo_p50_at_most_10ms": p50_ms is not None and p50_ms <= 10,
        "image_to_image_p50_ms": image_ms, "image_to_image_case": image_case,
        "image_to_image_at_most_12ms": image_ms is not None and image_ms <= 12,
        "sessions_frames_per_s": fps, "sessions_case": fps_case, "at_least_150_fps": fps is not None and fps >= 150,
        "sdxl_turbo_p50_ms": xl_ms, "sdxl_turbo_p50_case": xl_case,
        "sdxl_turbo_p50_at_most_25ms": xl_ms is not None and xl_ms <= 25,
    }


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"GPU: {m['gpu'] or 'none'}; torch {m['torch']} (CUDA {m['cuda']}), diffusers {m['diffusers']}, "
             f"transformers {m['transformers']}. Weights: **{r['weights']}**. Tokenizer: {r['tokenizer']}. "
             f"Attention: {r['attention']}. Prompt moderation: {'on' if r['moderation'] else 'off'}. "
             "Prompt cached. `served`: through `livegen serve` and its WebSocket, ready timed from process "
             "start; the others: the engine in-process, ready timed from `Engine.start`.", "",
             f"| case | ready s | 1 session p50 / p95 / p99 ms | image-to-image p50 ms | denoise / decode / encode ms (p50) | "
             f"floor b1 denoise+decode ms | {SESSIONS} sessions frames/s | {SESSIONS} sessions p50 / p99 ms | "
             "mean batch |", "|---|---|---|---|---|---|---|---|---|"]
    for e in r["cases"]:
        if f"sessions_{SESSIONS}" not in e:
            partial = {k: e[k] for k in ("start_to_ready_s", "one_session", "gpu_floor") if k in e}
            lines.append(f"| {e['label']} | {e.get('error') or e.get('skipped') or 'cut short'} {partial} ||||||||")
            continue
        one, many, st = e["one_session"], e[f"sessions_{SESSIONS}"], e["one_session"]["stages_p50_ms"]
        floor = e["gpu_floor"]["batch1"] if "gpu_floor" in e else None
        floor_text = f"{floor['denoise_ms']} + {floor['decode_ms']}" if floor else "-"
        lines.append(
            f"| {e['label']} | {e['start_to_ready_s']} | {one['p50_ms']} / {one['p95_ms']} / {one['p99_ms']} | "
            f"{e['one_session_image_to_image']['p50_ms']} | "
            f"{st.get('denoise_ms')} / {st.get('decode_ms')} / {st.get('wire_encode_ms')} | "
            f"{floor_text} | {many['frames_per_s']} | "
            f"{many['p50_ms']} / {many['p99_ms']} | {many['mean_batch']} |")
    for e in r["cases"]:
        peer = e.get("streamdiffusion")
        if peer and "error" in peer:
            lines += ["", f"- StreamDiffusion beside {e['label']}: failed: {peer['error'][-300:]}"]
        elif peer:
            ratio = peer["streamdiffusion_over_livegen"]
            lines += ["", f"- StreamDiffusion {peer['versions'].get('streamdiffusion')} (diffusers "
                          f"{peer['versions'].get('diffusers')}, {peer['settings']['dtype']}, acceleration "
                          f"{peer['settings']['acceleration']}) beside {e['label']}, text-to-image, same device, "
                          f"{peer['rounds']} alternating rounds of {peer['block']} frames: StreamDiffusion p50 "
                          f"{peer['streamdiffusion']['p50_ms']} ms in its worker, livegen {peer['livegen']['p50_ms']} ms "
                          f"over the WebSocket; StreamDiffusion / livegen {ratio['ratio']}x "
                          f"({ratio['low']}-{ratio['high']})"]
    t = r.get("targets") or {}

    def verdict(met: bool, figure: float | None, case: str | None, unit: str) -> str:
        return f"**{'met' if met else 'not met'}** ({figure} {unit}, {case})" if figure is not None else "not measured"

    if t:
        at = t["size"]
        lines += ["", f"- SD-Turbo {at}, one session p50 <= 10 ms: "
                      + verdict(t["sd_turbo_p50_at_most_10ms"], t["sd_turbo_p50_ms"], t["sd_turbo_p50_case"], "ms"),
                  f"- SD-Turbo {at}, image-to-image p50 <= 12 ms: "
                      + verdict(t["image_to_image_at_most_12ms"], t["image_to_image_p50_ms"], t["image_to_image_case"],
                                "ms"),
                  f"- SD-Turbo {at}, {SESSIONS} sessions >= 150 frames/s: "
                      + verdict(t["at_least_150_fps"], t["sessions_frames_per_s"], t["sessions_case"], "frames/s"),
                  f"- SDXL-Turbo {at}, one session p50 <= 25 ms: "
                      + verdict(t["sdxl_turbo_p50_at_most_25ms"], t["sdxl_turbo_p50_ms"], t["sdxl_turbo_p50_case"],
                                "ms")]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)
