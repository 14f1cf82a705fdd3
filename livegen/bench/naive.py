"""The naive server people start from, as a baseline: one HTTP request per frame, no warm engine.

Endpoints on a plain FastAPI app under uvicorn on loopback, each calling diffusers directly:
- `/student`: the distilled model at 1 step, its pipeline loaded once and warm: the cost of serving
  alone (`pipe(prompt)` per request, so the prompt is encoded every time);
- `/teacher`: many-step sampling, as before distillation: the teacher's architecture at 50 steps
  with classifier-free guidance, its pipeline loaded once (distillation and serving together);
- `/serverless`: the distilled model at 1 step, but loaded from disk on every request, as a
  scale-to-zero function does on a cold start.

The embedded model ships only its student, so the teacher is its architecture (the student's UNet
without the guidance embedding) with random weights: the cost of a step does not depend on the
weight values, and the pictures are not looked at.
"""

from __future__ import annotations

import functools
import io
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import Response

from livegen.bench.report import Series
from livegen.server.background import LoopbackServer

TEACHER_STEPS = 50
TEACHER_GUIDANCE = 3.0  # the embedded teacher's sampling guidance (docs/model.md)


def _load(path: Path) -> Any:
    from diffusers import DiffusionPipeline

    from livegen.models.embedded import pipeline_components

    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, **pipeline_components(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def teacher_architecture(student: Path, folder: Path) -> Path:
    """The student's pipeline with a random-weight UNet of the teacher's shape (no guidance embedding)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    if (folder / "model_index.json").is_file():
        return folder
    pipe = _load(student)
    config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
    config["time_cond_proj_dim"] = None
    pipe.unet = UNet2DConditionModel.from_config(config)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")  # as exported
    pipe.save_pretrained(folder)
    return folder


def naive_app(student: Path, teacher: Path | None, width: int, height: int) -> FastAPI:
    app = FastAPI()
    warm = functools.cache(lambda: _load(student))  # loaded by the first request, which is a warm-up
    loaded = _load(teacher) if teacher is not None else None

    def jpeg(pipe: Any, prompt: str, steps: int, guidance: float) -> bytes:
        image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height).images[0]
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        return buffer.getvalue()

    @app.get("/livez")
    def livez() -> dict:
        return {"status": "ok"}

    @app.post("/student")
    def one_step(body: dict) -> Response:
        return Response(jpeg(warm(), body["prompt"], 1, body["guidance"]), media_type="image/jpeg")

    @app.post("/teacher")
    def many_steps(body: dict) -> Response:
        return Response(jpeg(loaded, body["prompt"], TEACHER_STEPS, TEACHER_GUIDANCE), media_type="image/jpeg")

    @app.post("/serverless")
    def cold(body: dict) -> Response:
        return Response(jpeg(_load(student), body["prompt"], 1, body["guidance"]), media_type="image/jpeg")

    return app


def bench_naive(student: Path, teacher_folder: Path, width: int, height: int, frames: int, prompt: str,
                guidance: float) -> dict[str, Series]:
    """Per-request latency of both endpoints, measured by an HTTP client; one warm-up request each."""
    server = LoopbackServer(naive_app(student, teacher_architecture(student, teacher_folder), width, height))
    results = {}
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for name, path in (("naive server, teacher 50 steps", "/teacher"),
                               ("serverless, model loaded per request", "/serverless")):
                series = Series(name)
                for i in range(frames + 1):
                    started = time.perf_counter()
                    client.post(path, json={"prompt": prompt, "guidance": guidance}).raise_for_status()
                    if i:
                        series.ms.append((time.perf_counter() - started) * 1000)
                results[path.strip("/")] = series
    finally:
        server.stop()
    return results
