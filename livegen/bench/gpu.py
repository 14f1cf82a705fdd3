"""GPU scenarios: the real SD-Turbo and SDXL-Turbo architectures through livegen's own engine.

    livegen bench gpu [--quick] [--budget-s 400]    # on a CUDA machine
    livegen bench gpu --cpu                          # the same path with tiny models: a smoke test

The models are the real architectures with RANDOM WEIGHTS (`livegen.models.reference`): compute
does not depend on weight values, so the timings are the real models' timings; the pictures are
noise. Every table says so. Per case (architecture, size, dtype, CUDA graphs / torch.compile /
eager, tiny decoder), with what the graphs covered (`acceleration`):

- one session: text-to-image, 1 step, frames one after another, the prompt cached as a slider
  would leave it: latency seen by the engine's caller (p50/p95/p99) and the server's stages;
- GPU floor: the denoiser and the decoder alone, synchronised, at batch 1 and 8;
- 8 sessions: each sends its next input as soon as its last frame arrives; the engine
  micro-batches them (max_batch 8): aggregate frames/s, p50/p99 latency, mean batch.

Stage timings are CPU-side: kernels run asynchronously, so GPU time not yet finished when
`denoise` returns is paid inside `decode` (which copies the pixels to the host).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from livegen.bench.report import Series, header, save
from livegen.bench.warm import engine_frames, stage_medians
from livegen.config import ModelConfig, Settings
from livegen.engine import Engine
from livegen.models.base import BatchSpec
from livegen.protocol import Frame, Generate

PROMPT = "a red fox in the snow, golden hour"
SESSIONS = 8
WEIGHTS = "random (real architecture from the public config; speed does not depend on weight values)"


@dataclass(frozen=True)
class Case:
    architecture: str  # "sd-turbo" | "sdxl-turbo"
    size: int
    compile: bool = False
    graphs: bool = True  # CUDA graphs (the default on CUDA); torch.compile runs without them
    tiny_vae: bool = True
    dtype: str = "float16"
    estimate_s: float = 60  # rough wall time with a warm cache, to skip what the budget cannot hold

    @property
    def label(self) -> str:
        return (f"{self.architecture} {self.size}x{self.size} {self.dtype} "
                f"{'compile' if self.compile else 'graphs' if self.graphs else 'eager'} "
                f"{'tiny-vae' if self.tiny_vae else 'full-vae'}")


def cases(quick: bool, only: str | None = None) -> list[Case]:
    """In order of importance: the target configuration first, the long compiles where they fit.

    `only`: comma-separated words that a case's label must all contain (e.g. "sdxl,eager").
    """
    chosen = [Case("sd-turbo", 512, estimate_s=50), Case("sd-turbo", 512, graphs=False, estimate_s=30),
              Case("sd-turbo", 512, compile=True, graphs=False, estimate_s=240)]
    if not quick:
        chosen += [
            Case("sd-turbo", 512, tiny_vae=False, estimate_s=30),
            Case("sdxl-turbo", 512, estimate_s=70),
            Case("sdxl-turbo", 1024, estimate_s=45),
            Case("sd-turbo", 512, dtype="bfloat16", estimate_s=30),
            Case("sdxl-turbo", 512, graphs=False, estimate_s=40),
            Case("sdxl-turbo", 512, compile=True, graphs=False, estimate_s=300),
        ]
    words = [w.strip() for w in (only or "").split(",") if w.strip()]
    return [c for c in chosen if all(w in c.label for w in words)]


# ---------------------------------------------------------------- models on disk


def prepare(case: Case, cache: Path, cpu: bool) -> tuple[Path, Path | None, float]:
    """The pipeline folder (built once per architecture) and its tiny decoder; seconds spent building."""
    started = time.perf_counter()
    if cpu:  # smoke test of the whole path: livegen's tiny pipelines of the same families
        from livegen.models.tiny import build_tiny_pipeline, build_tiny_vae

        folder = cache / f"tiny-{case.architecture}"
        if not (folder / "model_index.json").is_file():
            build_tiny_pipeline(folder, "sd" if case.architecture == "sd-turbo" else "sdxl")
            build_tiny_vae(cache / f"tiny-{case.architecture}-taesd")
        tiny = cache / f"tiny-{case.architecture}-taesd"
    else:
        from livegen.models.reference import build_reference_pipeline, tiny_vae_folder

        folder = build_reference_pipeline(cache / case.architecture, case.architecture, tiny_vae=True)  # type: ignore[arg-type]
        tiny = tiny_vae_folder(folder)
    return folder, tiny if case.tiny_vae else None, time.perf_counter() - started


# ---------------------------------------------------------------- measurements


async def one_session(engine: Engine, frames: int, image: bytes | None = None) -> dict:
    series, timings = await engine_frames(engine, frames, PROMPT, "1 session", image)
    return {**series.summary(), "stages_p50_ms": stage_medians(timings)}


def camera_frame(size: int) -> bytes:
    """A JPEG the size the model serves, as a camera would send: image-to-image's input."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "JPEG", quality=85)
    return encoded.getvalue()


async def many_sessions(engine: Engine, sessions: int, seconds: float, min_frames: int = 3) -> dict:
    """Each session sends its next input as soon as its last frame arrives, for `seconds`."""
    latencies, batches = Series(f"{sessions} sessions"), []
    opened = [engine.open_session() for _ in range(sessions)]
    started_all = time.perf_counter()
    end = started_all + seconds

    async def client(k: int) -> None:
        session, i = opened[k], 0
        while i < min_frames or time.perf_counter() < end:
            started = time.perf_counter()
            await engine.submit(session, Generate(id=f"{k}-{i}", prompt=f"{PROMPT}, view {k}"))
            outcome = await session.next_outcome()
            assert isinstance(outcome, Frame), outcome
            latencies.ms.append((time.perf_counter() - started) * 1000)
            batches.append(outcome.batch_size)
            i += 1

    try:
        await asyncio.gather(*(client(k) for k in range(sessions)))
    finally:
        for session in opened:
            engine.close_session(session)
    wall = time.perf_counter() - started_all
    return {**latencies.summary(), "frames_per_s": round(len(latencies.ms) / wall, 1),
            "mean_batch": round(statistics.mean(batches), 2), "wall_s": round(wall, 2)}


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


async def measure(config: ModelConfig, size: int, frames: int, seconds: float, result: dict,
                  checkpoint: Callable[[], None]) -> None:
    """Fills `result` part by part, calling `checkpoint` after each (a run cut short keeps its parts)."""
    settings = Settings(models=[config], max_batch=SESSIONS)
    engine = Engine(settings)
    started = time.perf_counter()
    await engine.start()
    result["start_to_ready_s"] = round(time.perf_counter() - started, 1)
    result["acceleration"] = engine.acceleration()["bench"]
    runner = next(iter(engine.runners.values()))
    generator = runner.generator
    denoiser = getattr(generator.pipe, "unet", None)  # type: ignore[union-attr]
    if denoiser is not None:
        result["attention"] = sorted({type(p).__name__ for p in denoiser.attn_processors.values()})
    try:
        result["one_session"] = await one_session(engine, frames)
        checkpoint()
        result["one_session_image_to_image"] = await one_session(engine, frames, camera_frame(size))
        checkpoint()
        # On the runner's own thread: CUDA graphs recorded there are replayed there.
        result["gpu_floor"] = await asyncio.get_running_loop().run_in_executor(
            runner._executor, gpu_floor, engine, size, 10 if frames > 20 else 2)
        checkpoint()
        # Warm-up, not measured: a partial batch (with torch.compile, the first batch size other
        # than 1 and 8 compiles a dynamic-shape graph), then full ones.
        started = time.perf_counter()
        await many_sessions(engine, 3, 0.0, min_frames=2)
        await many_sessions(engine, SESSIONS, 0.0, min_frames=3)
        result["sessions_warmup_s"] = round(time.perf_counter() - started, 1)
        result[f"sessions_{SESSIONS}"] = await many_sessions(engine, SESSIONS, seconds)
    finally:
        await engine.stop()


# ---------------------------------------------------------------- the run


def run(output: Path, quick: bool = False, *, cpu: bool = False, cache: Path | None = None,
        budget_s: float | None = None, only: str | None = None) -> dict:
    """Measure every case that fits `budget_s`; writes gpu.json and gpu.md to `output` after each case.

    `cpu` runs the same path with livegen's tiny pipelines at 64x64, eager only (a smoke test).
    """
    begun = time.perf_counter()
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the smoke test")
    # max-autotune keeps cuBLAS/cuDNN for matrix products and convolutions instead of timing
    # Triton templates for each: the compile then takes minutes, not tens of minutes.
    import torch._inductor.config as inductor

    inductor.max_autotune_gemm_backends = "ATEN"
    inductor.max_autotune_conv_backends = "ATEN"
    cache = cache or output / "models"
    frames, seconds = (4, 0.0) if cpu else ((60, 2.0) if quick else (200, 4.0))
    results = {
        **header("gpu"),
        "weights": "tiny random pipelines (CPU smoke test, not a measurement)" if cpu else WEIGHTS,
        "tokenizer": "livegen's character-level CLIP tokenizer, padded to the real 77 tokens",
        "attention": "diffusers default processor (torch SDPA)",
        "frames_per_session_max": frames, "seconds_per_scenario": seconds, "max_batch": SESSIONS,
        "builds_s": {}, "cases": [],
    }
    for case in cases(quick, only):
        if cpu:
            if case.compile or not case.graphs:
                continue  # an inductor compile on the CPU takes minutes; without CUDA, graphs change nothing
            case = replace(case, size=64, dtype="float32")
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

            asyncio.run(measure(config, case.size, frames, seconds, entry, checkpoint))
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
        results["targets"] = targets(results["cases"])
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
            f"stages {one['stages_p50_ms']}; floor {entry['gpu_floor']}")


def targets(entries: list[dict]) -> dict:
    """Issue 6's targets, on the SD-Turbo architecture at 512x512, 1 step, text-to-image."""
    sd = [e for e in entries if e["architecture"] == "sd-turbo" and e["size"] == 512 and "one_session" in e]
    many = [e for e in sd if f"sessions_{SESSIONS}" in e]
    if not sd:
        return {}
    best_p50 = min(sd, key=lambda e: e["one_session"]["p50_ms"])
    best_fps = max(many, key=lambda e: e[f"sessions_{SESSIONS}"]["frames_per_s"]) if many else None
    p50 = best_p50["one_session"]["p50_ms"]
    fps = best_fps[f"sessions_{SESSIONS}"]["frames_per_s"] if best_fps else 0.0
    best_fps = best_fps or {"label": None}
    image = min(e["one_session_image_to_image"]["p50_ms"] for e in sd if "one_session_image_to_image" in e) \
        if any("one_session_image_to_image" in e for e in sd) else None
    return {"one_session_p50_ms": p50, "one_session_p50_case": best_p50["label"], "p50_at_most_10ms": p50 <= 10,
            "image_to_image_p50_ms": image, "image_to_image_at_most_12ms": image is not None and image <= 12,
            "sessions_frames_per_s": fps, "sessions_case": best_fps["label"], "at_least_150_fps": fps >= 150}


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"GPU: {m['gpu'] or 'none'}; torch {m['torch']} (CUDA {m['cuda']}), diffusers {m['diffusers']}, "
             f"transformers {m['transformers']}. Weights: **{r['weights']}**. Tokenizer: {r['tokenizer']}. "
             f"Attention: {r['attention']}. Text-to-image, 1 step, prompt cached; latency seen by the "
             "in-process engine caller.", "",
             f"| case | ready s | 1 session p50 / p95 / p99 ms | image-to-image p50 ms | denoise / decode / encode ms (p50) | "
             f"floor b1 denoise+decode ms | {SESSIONS} sessions frames/s | {SESSIONS} sessions p50 / p99 ms | "
             "mean batch |", "|---|---|---|---|---|---|---|---|---|"]
    for e in r["cases"]:
        if f"sessions_{SESSIONS}" not in e:
            partial = {k: e[k] for k in ("start_to_ready_s", "one_session", "gpu_floor") if k in e}
            lines.append(f"| {e['label']} | {e.get('error') or e.get('skipped') or 'cut short'} {partial} ||||||||")
            continue
        one, many, st = e["one_session"], e[f"sessions_{SESSIONS}"], e["one_session"]["stages_p50_ms"]
        floor = e["gpu_floor"]["batch1"]
        lines.append(
            f"| {e['label']} | {e['start_to_ready_s']} | {one['p50_ms']} / {one['p95_ms']} / {one['p99_ms']} | "
            f"{e['one_session_image_to_image']['p50_ms']} | "
            f"{st.get('denoise_ms')} / {st.get('decode_ms')} / {st.get('wire_encode_ms')} | "
            f"{floor['denoise_ms']} + {floor['decode_ms']} | {many['frames_per_s']} | "
            f"{many['p50_ms']} / {many['p99_ms']} | {many['mean_batch']} |")
    t = r.get("targets") or {}
    if t:
        lines += ["", f"- SD-Turbo 512, one session p50 <= 10 ms: **{'met' if t['p50_at_most_10ms'] else 'not met'}** "
                      f"({t['one_session_p50_ms']} ms, {t['one_session_p50_case']})",
                  f"- SD-Turbo 512, image-to-image p50 <= 12 ms: "
                  f"**{'met' if t['image_to_image_at_most_12ms'] else 'not met'}** ({t['image_to_image_p50_ms']} ms)",
                  f"- SD-Turbo 512, {SESSIONS} sessions >= 150 frames/s: "
                  f"**{'met' if t['at_least_150_fps'] else 'not met'}** ({t['sessions_frames_per_s']}, "
                  f"{t['sessions_case']})"]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)
