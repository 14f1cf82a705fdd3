"""`livegen serve | generate | tiny-model | bench`."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from livegen.config import DType, Device, Family, ModelConfig, Settings

app = typer.Typer(help="livegen: real-time generation server.", no_args_is_help=True, add_completion=False)

NO_MODEL = """\
livegen has no model to serve.

Point it at a few-step diffusers pipeline on this machine (a folder made with save_pretrained,
or a repo id already in the local Hugging Face cache; nothing is downloaded):

    make serve MODEL=/path/to/sd-turbo
    livegen serve --model /path/to/sd-turbo --size 512x512
    LIVEGEN_MODELS='[{"source": "/path/to/sd-turbo"}]' livegen serve

To try the server now, build a tiny random-weight pipeline (its pictures are noise):

    livegen tiny-model /tmp/livegen-tiny && make serve MODEL=/tmp/livegen-tiny SIZE=128x128
"""

ModelOption = Annotated[list[str] | None, typer.Option("--model", "-m", help="Model folder or cached repo id; repeatable.")]
SizeOption = Annotated[list[str] | None, typer.Option("--size", help="Served size WxH; repeatable.")]
DeviceOption = Annotated[Device, typer.Option(help="auto, cpu, cuda or mps.")]
DTypeOption = Annotated[DType, typer.Option(help="auto: float16 on CUDA, float32 elsewhere.")]


def _settings(models: list[str] | None, sizes: list[str] | None, device: str, dtype: str, family: str,
              compile: bool, tiny_vae: str | None, lora: str | None, **overrides: object) -> Settings:
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    extra = {k: v for k, v in dict(sizes=sizes, tiny_vae=tiny_vae, lora=lora).items() if v}
    for source in models or []:
        settings.models.append(ModelConfig(source=source, device=device, dtype=dtype, family=family,
                                           compile=compile, **extra))
    return settings


def _check_models(settings: Settings) -> None:
    """Fail before the server starts, with the path, rather than in a log line later."""
    from livegen.models.base import ModelError
    from livegen.models.loader import resolve_source

    if not settings.models:
        typer.echo(NO_MODEL, err=True)
        raise typer.Exit(2)
    for config in settings.models:
        try:
            path = resolve_source(config.source)
        except ModelError as exc:
            typer.echo(f"livegen: {exc}", err=True)
            raise typer.Exit(2) from exc
        if not (path / "model_index.json").is_file():
            typer.echo(f"livegen: {path} is not a diffusers pipeline folder (no model_index.json)", err=True)
            raise typer.Exit(2)


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@app.command()
def serve(
    model: ModelOption = None,
    size: SizeOption = None,
    device: DeviceOption = "auto",
    dtype: DTypeOption = "auto",
    family: Annotated[Family, typer.Option(help="Sampler family; read from the model if auto.")] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the denoiser (CUDA).")] = False,
    tiny_vae: Annotated[str | None, typer.Option(help="AutoencoderTiny folder to decode with.")] = None,
    lora: Annotated[str | None, typer.Option(help="LoRA folder to fuse (LCM-LoRA).")] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    max_batch: Annotated[int | None, typer.Option(help="Most inputs in one forward pass.")] = None,
    batch_wait_ms: Annotated[float | None, typer.Option(help="Longest wait for batch companions.")] = None,
) -> None:
    """Load and warm the models, then serve the WebSocket stream and HTTP API."""
    import uvicorn

    settings = _settings(model, size, device, dtype, family, compile, tiny_vae, lora, host=host, port=port,
                         max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    _check_models(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _quiet_libraries()
    from livegen.engine import Engine
    from livegen.server.app import create_app

    url = f"http://{settings.host}:{settings.port}"
    typer.echo(f"livegen: serving on {url} (stream: ws://{settings.host}:{settings.port}/v1/stream); "
               f"{url}/readyz turns 200 once every model is warm")
    uvicorn.run(create_app(Engine(settings)), host=settings.host, port=settings.port,
                ws_max_size=settings.max_message_bytes * 4, log_level="info")


@app.command()
def generate(
    prompt: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image file; its suffix picks the format.")],
    url: Annotated[str | None, typer.Option(help="A running server, e.g. http://127.0.0.1:8000.")] = None,
    model: ModelOption = None,
    size: SizeOption = None,
    device: DeviceOption = "auto",
    seed: Annotated[int | None, typer.Option()] = None,
    steps: Annotated[int, typer.Option()] = 1,
    guidance: Annotated[float | None, typer.Option()] = None,
    image: Annotated[Path | None, typer.Option(help="Input image for image-to-image.")] = None,
    strength: Annotated[float, typer.Option()] = 0.5,
) -> None:
    """Generate one image through a running server (--url) or in this process (--model)."""
    from livegen.client import Client, GenerationError
    from livegen.protocol import Frame, Generate

    suffix = output.suffix.lower().lstrip(".")
    fmt = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}.get(suffix)
    if fmt is None:
        typer.echo("livegen: output must end in .png, .jpg or .webp", err=True)
        raise typer.Exit(2)
    fields = dict(seed=seed, steps=steps, guidance=guidance, strength=strength, format=fmt,
                  image=image.read_bytes() if image else None)
    if size:
        from livegen.config import parse_size

        fields["width"], fields["height"] = parse_size(size[0])
    try:
        if url:
            with Client(url) as client:
                frame = client.generate(prompt, **fields)
        else:
            settings = _settings(model, size, device, "auto", "auto", False, None, None, warmup_runs=1)
            _check_models(settings)
            _quiet_libraries()
            frame = asyncio.run(_generate_in_process(settings, Generate(id="cli", prompt=prompt, **fields)))
    except GenerationError as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(1) from exc
    assert isinstance(frame, Frame)
    output.write_bytes(frame.image)
    typer.echo(f"{output}: {frame.width}x{frame.height} seed {frame.seed} {json.dumps(frame.timings)}")


async def _generate_in_process(settings: Settings, request: object):
    from livegen.client import GenerationError
    from livegen.engine import Engine
    from livegen.protocol import Error

    engine = Engine(settings)
    await engine.start()
    try:
        outcome = await engine.generate(request)  # type: ignore[arg-type]
    finally:
        await engine.stop()
    if isinstance(outcome, Error):
        raise GenerationError(outcome)
    return outcome


@app.command("tiny-model")
def tiny_model(
    path: Path,
    architecture: Annotated[str, typer.Option(help="sd, sdxl or flux.")] = "sd",
    sampler: Annotated[str, typer.Option(help="turbo, lcm or tcd (UNet architectures).")] = "turbo",
) -> None:
    """Build a tiny random-weight pipeline of a real architecture, for trying things out."""
    from livegen.models.tiny import build_tiny_pipeline

    _quiet_libraries()
    build_tiny_pipeline(path, architecture, sampler)  # type: ignore[arg-type]
    typer.echo(f"{path}: tiny {architecture} pipeline ({sampler}); random weights, pictures are noise")


bench_app = typer.Typer(help="Measure latency; results go to JSON and markdown.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("warm")
def bench_warm(
    model: Annotated[Path | None, typer.Option(help="Pipeline folder; a tiny random SD pipeline if absent.")] = None,
    size: Annotated[str, typer.Option(help="WxH.")] = "128x128",
    frames: Annotated[int, typer.Option(help="Measured frames per path.")] = 50,
    quick: Annotated[bool, typer.Option(help="Smoke-test mode: a few frames.")] = False,
    output: Annotated[Path, typer.Option(help="Folder for warm.json and warm.md.")] = Path("bench-results"),
) -> None:
    """Warm engine vs direct diffusers call vs WebSocket round trip, and the first frame after ready."""
    from livegen.bench.warm import run
    from livegen.config import parse_size
    from livegen.models.tiny import build_tiny_pipeline

    _quiet_libraries()
    width, height = parse_size(size)
    if model is None:
        model = output / "bench-sd-16m"
        if not (model / "model_index.json").is_file():
            build_tiny_pipeline(model, "sd", "turbo", unet_channels=BENCH_UNET, text_width=384, text_layers=6)
    run(model, width, height, 3 if quick else frames, output)
    typer.echo((output / "warm.md").read_text())
    typer.echo(f"results: {output / 'warm.json'}")


# The default benchmark pipeline has the shape the embedded model targets on a CPU: a 16M UNet
# with 384-wide cross-attention and a MiniLM-sized (384 x 6 layers) text encoder.
BENCH_UNET = (64, 128, 256)
