"""`livegen bench model`: one image from noise to RGB pixels with the embedded model (or any
pipeline), through the same backend stages the engine runs, at 1, 2 and 4 steps.

- cached prompt: the prompt embedding is computed once (what the engine's cache does for an
  unchanged prompt): denoise + decode;
- uncached: a new prompt every image: text encode + denoise + decode.
No engine, no wire encode: this is the model's own cost, the floor under every served frame.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.progress import Progress

from livegen.bench.report import Series, header, save
from livegen.config import ModelConfig
from livegen.models.base import BatchSpec
from livegen.models.loader import load_generator

PROMPT = "a cat face"
STEPS = (1, 2, 4)


def _one_image(generator, spec: BatchSpec, prompt: str | None, cached, seed: int) -> float:
    started = time.perf_counter()
    embedding = cached if prompt is None else generator.encode_prompt(prompt)
    noise = generator.make_noise(spec.width, spec.height, seed)
    latents = generator.denoise(spec, [embedding], noise, None, [seed], lambda: False)
    generator.decode(latents)
    return (time.perf_counter() - started) * 1000


def run(config: ModelConfig, images: int, output: Path) -> dict[str, object]:
    generator = load_generator(config)
    width, height = config.sizes[0]
    guidance = generator.description.default_guidance
    cached = generator.encode_prompt(PROMPT)
    results: dict[str, object] = {
        **header("model"),
        "model": config.display_name,
        "size": f"{width}x{height}",
        "guidance": guidance,
        "images": images,
        "steps": {},
    }
    with Progress() as progress:
        task = progress.add_task("noise to pixels", total=len(STEPS) * 2 * (images + 3))
        for steps in STEPS:
            spec = BatchSpec(width, height, steps, guidance, None)
            series = {"cached_prompt": Series("cached prompt"), "uncached_prompt": Series("uncached prompt")}
            for i in range(images + 3):  # three warm-up images per path
                for name, prompt in (("cached_prompt", None), ("uncached_prompt", f"{PROMPT} number {i}")):
                    ms = _one_image(generator, spec, prompt, cached, seed=i)
                    if i >= 3:
                        series[name].ms.append(ms)
                    progress.advance(task)
            results["steps"][str(steps)] = {name: s.summary() for name, s in series.items()}  # type: ignore[index]
    save(results, markdown(results), output)
    return results


def markdown(r: dict) -> str:
    lines = [f"Model `{r['model']}`, {r['size']}, guidance {r['guidance']}, {r['images']} images per row; "
             f"{r['machine']['cpu']} ({r['machine']['cores']} cores, {r['machine']['torch_threads']} torch threads), "
             f"GPU: {r['machine']['gpu'] or 'none'}.",
             "", "| steps | cached prompt p50 ms | p95 ms | uncached prompt p50 ms | p95 ms |", "|---|---|---|---|---|"]
    for steps, row in r["steps"].items():
        c, u = row["cached_prompt"], row["uncached_prompt"]
        lines.append(f"| {steps} | {c['p50_ms']} | {c['p95_ms']} | {u['p50_ms']} | {u['p95_ms']} |")
    return "\n".join(lines) + "\n"

