"""`livegen serve | generate | say | verify | keys | train | eval | tiny-model | bench`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from livegen.config import DType, Device, Family, ModelConfig, Settings
from livegen.protocol import Export, Exported, ProtocolError, Speak

app = typer.Typer(help="livegen: real-time generation server.", no_args_is_help=True, add_completion=False)

NO_MODEL = """\
livegen has no model to serve: the model list is empty.

Leave LIVEGEN_MODELS unset to serve livegen's own emoji model, or point it at a few-step
diffusers pipeline on this machine (a folder made with save_pretrained, or a repo id already in
the local Hugging Face cache; nothing is downloaded):

    make serve MODEL=/path/to/sd-turbo SIZE=512x512
    livegen serve --model /path/to/sd-turbo --size 512x512
    LIVEGEN_MODELS='[{"source": "/path/to/sd-turbo"}]' livegen serve
"""

ModelOption = Annotated[list[str] | None, typer.Option("--model", "-m", help="Model folder or cached repo id; repeatable.")]
SizeOption = Annotated[list[str] | None, typer.Option("--size", help="Served size WxH; repeatable.")]
DeviceOption = Annotated[Device, typer.Option(help="auto, cpu, cuda or mps.")]
DTypeOption = Annotated[DType, typer.Option(help="auto: float16 on CUDA, float32 elsewhere.")]


def _settings(models: list[str] | None, sizes: list[str] | None, device: str, dtype: str, family: str,
              compile: bool, tiny_vae: str | None, lora: str | None, cuda_graphs: bool = True,
              **overrides: object) -> Settings:
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    extra = {k: v for k, v in dict(sizes=sizes, tiny_vae=tiny_vae, lora=lora).items() if v}
    if models and "models" not in settings.model_fields_set:
        settings.models = []  # models named on the command line replace the embedded default
    for source in models or []:
        settings.models.append(ModelConfig(source=source, device=device, dtype=dtype, family=family,
                                           compile=compile, cuda_graphs=cuda_graphs, **extra))
    return settings


def _check_access(settings: Settings) -> None:
    """Secure by default: anywhere but loopback, keys (or an explicit --insecure) before any port opens."""
    from livegen.access.gate import is_loopback
    from livegen.access.keys import KeyFileError, KeyRing

    try:
        has_keys = KeyRing(settings.access.keys_file, settings.access.key_hashes).configured
    except KeyFileError as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not has_keys and not settings.access.insecure and not is_loopback(settings.host):
        typer.echo(f"livegen: refusing to serve {settings.host} without API keys: anyone who reaches the port "
                   f"could use it.\n  Add a key:  livegen api-keys create --name me   (kept in "
                   f"{settings.access.keys_file})\n  or serve 127.0.0.1, or accept the risk with --insecure.",
                   err=True)
        raise typer.Exit(2)


def _check_models(settings: Settings) -> None:
    """Fail before the server starts, with the path, rather than in a log line later."""
    from livegen.models.base import ModelError
    from livegen.models.sources import resolve_source

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
    """No progress bars or warnings from diffusers, transformers or the Hub: the CLI prints its own. Set
    in the environment, which they read on import, so nothing is imported early (diffusers takes seconds)."""
    os.environ.update(DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")


ReplicasOption = Annotated[int | None, typer.Option(help="Ray: replicas kept warm (default 1).")]
MaxReplicasOption = Annotated[int | None, typer.Option(
    help="Ray: most replicas; above --replicas, Serve autoscales on open sessions.")]
ReplicaCpusOption = Annotated[float | None, typer.Option(help="Ray: CPUs per replica (default 1).")]
ReplicaGpusOption = Annotated[float | None, typer.Option(help="Ray: GPUs per replica, a fraction to share one.")]
RayIngressOption = Annotated[str | None, typer.Option(
    help="Ray: what takes the connections, `haproxy` (default) or Serve's Python `proxy`; the cluster's nodes "
         "read it when they start.")]


def _ray_config(settings: Settings, replicas: int | None, max_replicas: int | None, cpus: float | None,
                gpus: float | None, ingress: str | None, address: str | None = None):
    from pydantic import ValidationError

    from livegen.config import RayConfig

    given = dict(min_replicas=replicas, cpus=cpus, gpus=gpus, ingress=ingress, address=address,
                 max_replicas=max_replicas if max_replicas is not None else replicas)
    try:
        return RayConfig.model_validate({**settings.ray.model_dump(), **{k: v for k, v in given.items()
                                                                         if v is not None}})
    except ValidationError as exc:
        typer.echo(f"livegen: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from exc


def _rayserve():
    try:
        from livegen.rayserve import application
    except ImportError as exc:
        typer.echo(f"livegen: Ray Serve is not installed ({exc}): pip install 'livegen[ray]'", err=True)
        raise typer.Exit(2) from exc
    return application


@app.command()
def serve(
    model: ModelOption = None,
    size: SizeOption = None,
    device: DeviceOption = "auto",
    dtype: DTypeOption = "auto",
    family: Annotated[Family, typer.Option(help="Sampler family; read from the model if auto.")] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the denoiser (CUDA).")] = False,
    cuda_graphs: Annotated[bool, typer.Option(
        help="On CUDA, replay the denoiser and decoder as CUDA graphs captured at warm-up.")] = True,
    tiny_vae: Annotated[str | None, typer.Option(help="AutoencoderTiny folder to decode with.")] = None,
    lora: Annotated[str | None, typer.Option(help="LoRA folder to fuse (LCM-LoRA).")] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    max_batch: Annotated[int | None, typer.Option(help="Most inputs in one forward pass.")] = None,
    batch_wait_ms: Annotated[float | None, typer.Option(help="Longest wait for batch companions.")] = None,
    speech: Annotated[bool, typer.Option(help="Serve the speech model beside the image models.")] = True,
    policy: Annotated[Path | None, typer.Option(help="Moderation policy (TOML); livegen's own if absent.")] = None,
    moderation: Annotated[bool, typer.Option(help="Check prompts against the policy before compute.")] = True,
    speech_policy: Annotated[Path | None, typer.Option(
        help="Spoken replies' policy (TOML); livegen's own if absent.")] = None,
    speech_moderation: Annotated[bool, typer.Option(
        help="Check each phrase of a spoken reply against the speech policy before synthesis.")] = True,
    output_checker: Annotated[str | None, typer.Option(
        help="Safety checker folder or cached repo id, or module:factory.")] = None,
    watermark: Annotated[bool, typer.Option(help="An invisible watermark on every frame.")] = True,
    audio_watermark: Annotated[bool, typer.Option(
        help="An inaudible watermark on every chunk of speech (server tag, utterance counter).")] = True,
    keys: Annotated[Path | None, typer.Option(help="Folder of the Content Credentials signing chain.")] = None,
    drain_seconds: Annotated[float | None, typer.Option(
        help="On SIGTERM, how long running work may take to finish before sockets close (default 10).")] = None,
    deadline_seconds: Annotated[float | None, typer.Option(
        help="A batch computing longer is answered `timeout` (default: 10x the slowest warm-up, at least 5).")] = None,
    loop_stall_seconds: Annotated[float | None, typer.Option(
        help="Exit when the event loop has not run this long, for a supervisor to restart (default 30; 0: never).")] = None,
    api_keys: Annotated[Path | None, typer.Option(help="API key file (livegen api-keys create); "
                                                       "~/.local/share/livegen/api-keys.json if absent.")] = None,
    insecure: Annotated[bool, typer.Option(help="Serve a non-loopback address without API keys.")] = False,
    allowed_origin: Annotated[list[str] | None, typer.Option(
        help="An origin whose pages may open sessions, besides this server's own and loopback; repeatable.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="An origin allowed cross-origin HTTP calls (CORS); repeatable; none if absent.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run as replicas on Ray Serve (pip install livegen[ray]; "
                                                    "docs/deploying.md).")] = False,
    replicas: ReplicasOption = None,
    max_replicas: MaxReplicasOption = None,
    replica_cpus: ReplicaCpusOption = None,
    replica_gpus: ReplicaGpusOption = None,
    ray_ingress: RayIngressOption = None,
    ray_address: Annotated[str | None, typer.Option(help="A Ray cluster to join; a local one if absent.")] = None,
) -> None:
    """Load and warm the models, then serve the WebSocket stream and HTTP API."""
    import uvicorn

    settings = _settings(model, size, device, dtype, family, compile, tiny_vae, lora, cuda_graphs, host=host, port=port,
                         max_batch=max_batch, batch_wait_ms=batch_wait_ms, drain_seconds=drain_seconds,
                         deadline_s=deadline_seconds, loop_stall_seconds=loop_stall_seconds)
    if not speech:
        settings.speech = None
    safety = {"policy": policy, "output_checker": output_checker, "keys": keys, "speech_policy": speech_policy}
    settings.safety = settings.safety.model_copy(update={
        "moderation": moderation, "speech_moderation": speech_moderation, "watermark": watermark,
        "audio_watermark": audio_watermark,
        **{k: v for k, v in safety.items() if v is not None}})
    access = {"keys_file": api_keys, "allowed_origins": allowed_origin, "cors_origins": cors_origin}
    settings.access = settings.access.model_copy(update={
        "insecure": insecure or settings.access.insecure, **{k: v for k, v in access.items() if v}})
    _check_access(settings)
    _check_models(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _quiet_libraries()
    if ray:
        settings.ray = _ray_config(settings, replicas, max_replicas, replica_cpus, replica_gpus, ray_ingress,
                                   ray_address)
        _rayserve().run(settings)
        return
    from livegen.models import import_image_libraries_early
    from livegen.models.packed import has_pack

    if not all(has_pack(model) for model in settings.models):  # a kept pack loads without them
        import_image_libraries_early()
    from livegen.engine import Engine
    from livegen.server.app import create_app
    from livegen.server.draining import DrainingServer

    url = f"http://{settings.host}:{settings.port}"
    typer.echo(f"livegen: open {url}/ for the playground (stream: ws://{settings.host}:{settings.port}/v1/stream); "
               f"{url}/readyz turns 200 once every model is warm")
    engine = Engine(settings)
    config = uvicorn.Config(create_app(engine), host=settings.host, port=settings.port,
                            ws_max_size=settings.max_message_bytes * 4, log_level="info")
    DrainingServer(config, engine).run()


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
    api_key: Annotated[str | None, typer.Option(envvar="LIVEGEN_API_KEY", show_envvar=True,
                                                help="The server's API key, for --url.")] = None,
) -> None:
    """Generate one image through a running server (--url) or in this process (--model)."""
    from livegen.client import Client, ConnectionLost, GenerationError
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
            with Client(url, api_key=api_key) as client:
                frame = client.generate(prompt, **fields)
                frame = frame.model_copy(update={"image": client.export(frame.id).image})  # signed
        else:
            settings = _settings(model, size, device, "auto", "auto", False, None, None, warmup_runs=1)
            _check_models(settings)
            _quiet_libraries()
            frame = asyncio.run(_generate_in_process(settings, Generate(id="cli", prompt=prompt, **fields)))
    except (GenerationError, ConnectionLost) as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(1) from exc
    assert isinstance(frame, Frame)
    output.write_bytes(frame.image)
    typer.echo(f"{output}: {frame.width}x{frame.height} seed {frame.seed} {json.dumps(frame.timings)}")


@app.command()
def say(
    text: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="WAV file to write.")],
    url: Annotated[str | None, typer.Option(help="A running server; in this process if absent.")] = None,
    voice: Annotated[str | None, typer.Option(help="A voice of the model; its default if absent.")] = None,
    speed: Annotated[float, typer.Option(min=0.5, max=2.0)] = 1.0,
) -> None:
    """Speak text into a WAV file, streamed through a running server (--url) or in this process."""
    from livegen.client import Client, ConnectionLost, GenerationError

    if url is None:
        asyncio.run(_say_in_process(text, output, voice, speed))
        return
    try:
        with Client(url) as client:
            speech = client.say(text, voice=voice, speed=speed)
            signed = client.export(speech.id)  # the WAV with the server's Content Credentials
    except (GenerationError, ConnectionLost) as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(1) from exc
    output.write_bytes(signed.image)
    typer.echo(f"{output}: {len(speech.pcm) // 2 / speech.sample_rate:.2f} s in {len(speech.chunks)} chunks, "
               f"first audio after {speech.end.timings['ttfa_ms']:.0f} ms; signed Content Credentials")


async def _say_in_process(text: str, output: Path, voice: str | None, speed: float) -> None:
    from livegen.client import GenerationError, Speech
    from livegen.engine import Engine

    _quiet_libraries()
    engine = Engine(Settings(models=[], speech=Settings().speech))
    await engine.start()
    session = engine.open_session()
    try:
        await engine.submit(session, Speak(id="say", text=text, voice=voice, speed=speed))
        speech = Speech("say")
        while not speech.take(await session.next_outcome(), None):
            pass
        await engine.submit(session, Export(id="say"))  # the WAV with Content Credentials
        signed = await session.next_outcome()
        if not isinstance(signed, Exported):
            raise GenerationError(signed)  # type: ignore[arg-type]
    except (ProtocolError, GenerationError) as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        await engine.stop()
    output.write_bytes(signed.image)
    typer.echo(f"{output}: {len(speech.pcm) // 2 / speech.sample_rate:.2f} s, first audio after "
               f"{speech.end.timings['ttfa_ms']:.0f} ms; signed Content Credentials")  # type: ignore[union-attr]


async def _generate_in_process(settings: Settings, request: object):
    from livegen.client import GenerationError
    from livegen.engine import Engine
    from livegen.protocol import Blocked, Error

    engine = Engine(settings)
    await engine.start()
    try:
        outcome = await engine.generate(request)  # type: ignore[arg-type]
    finally:
        await engine.stop()
    if isinstance(outcome, Blocked):
        raise GenerationError(Error(id=outcome.id, code="blocked", message=outcome.message))
    if isinstance(outcome, Error):
        raise GenerationError(outcome)
    return outcome


ray_app = typer.Typer(help="Ray Serve: replicas across machines and GPUs (docs/deploying.md).", no_args_is_help=True)
app.add_typer(ray_app, name="ray")


@ray_app.command("config")
def ray_config(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="YAML file; standard output if absent.")] = None,
    model: ModelOption = None,
    size: SizeOption = None,
    host: Annotated[str | None, typer.Option(help="Where Serve's proxies listen (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option()] = None,
    replicas: ReplicasOption = None,
    max_replicas: MaxReplicasOption = None,
    replica_cpus: ReplicaCpusOption = None,
    replica_gpus: ReplicaGpusOption = None,
    ray_ingress: RayIngressOption = None,
) -> None:
    """A `serve deploy` config (also a RayService's serveConfigV2) for these settings and LIVEGEN_* ones."""
    settings = _settings(model, size, "auto", "auto", "auto", False, None, None, host=host, port=port)
    settings.ray = _ray_config(settings, replicas, max_replicas, replica_cpus, replica_gpus, ray_ingress)
    _check_access(settings)
    _check_models(settings)
    rayserve = _rayserve()
    import yaml

    text = yaml.safe_dump(rayserve.serve_config(settings), sort_keys=False)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}: serve deploy {output}")
    if hint := rayserve.node_env_hint(settings.ray):
        typer.echo(hint, err=True)


keys_app = typer.Typer(help="Signing keys for the Content Credentials on exported images.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
KeysDirOption = Annotated[Path | None, typer.Option("--dir", help="Where the keys are; the server's setting if absent.")]


@keys_app.command("init")
def keys_init(directory: KeysDirOption = None) -> None:
    """Make a development chain (a root and a signing certificate it issued) for local use."""
    from livegen.safety.provenance import init_keys

    directory = directory or Settings().safety.keys
    try:
        keys = init_keys(directory)
    except FileExistsError as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"signing chain {keys.cert_chain}\nprivate key   {keys.private_key}\n"
               f"root          {keys.root} (trust it where you verify: livegen verify --root)")


api_keys_app = typer.Typer(help="API keys: who may use the server (docs/security.md).", no_args_is_help=True)
app.add_typer(api_keys_app, name="api-keys")
KeyFileOption = Annotated[Path | None, typer.Option("--file", help="The key file; the server's setting if absent.")]


def _key_file(path: Path | None):
    from livegen.access.keys import KeyFile

    return KeyFile(path or Settings().access.keys_file)


@api_keys_app.command("create")
def api_keys_create(name: Annotated[str, typer.Option(help="Who or what the key is for.")],
                    file: KeyFileOption = None) -> None:
    """Make a key; it is shown once here and stored only as a hash."""
    keys = _key_file(file)
    secret, key = keys.create(name)
    typer.echo(f"{secret}\n\nid {key.id}, stored hashed in {keys.path}; this is the only time the key is shown.\n"
               f"For a server configured by environment instead: LIVEGEN_ACCESS__KEY_HASHES='[\"{key.id}:{key.sha256}\"]'")


@api_keys_app.command("list")
def api_keys_list(file: KeyFileOption = None) -> None:
    """Every key's id, name, age and state (never the key)."""
    import datetime

    for key in _key_file(file).read().values():
        made = datetime.datetime.fromtimestamp(key.created).isoformat(timespec="seconds")
        state = "revoked " + datetime.datetime.fromtimestamp(key.revoked).isoformat(timespec="seconds") \
            if key.revoked else "active"
        typer.echo(f"{key.id}  {key.name:<24}  created {made}  {state}")


@api_keys_app.command("revoke")
def api_keys_revoke(key_id: Annotated[str, typer.Argument(help="The id `list` shows.")],
                    file: KeyFileOption = None) -> None:
    """Revoke a key: new sessions are refused at once, open ones closed within seconds."""
    from livegen.access.keys import KeyFileError

    try:
        key = _key_file(file).revoke(key_id)
    except KeyFileError as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"revoked {key.id} ({key.name})")


@app.command()
def verify(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="An image or audio file (WAV, MP3, FLAC, Ogg) livegen made.")],
    root: Annotated[Path | None, typer.Option(
        help="Root certificate to trust; the server's development root if absent.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of text.")] = False,
) -> None:
    """Report the watermark's payload (an image's, or speech's) and a file's C2PA manifest, and whether the
    manifest validates.

    Exit status: 0, or 1 when a manifest is present but fails validation (the image was changed).
    """
    import dataclasses
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    import soundfile

    from livegen.safety import audio_watermark, watermark
    from livegen.safety.provenance import ManifestReport, ProvenanceError, read_manifest

    data = file.read_bytes()
    try:
        try:
            with Image.open(io.BytesIO(data)) as image:
                mime_type = Image.MIME[image.format]
                reading = watermark.read(np.asarray(image.convert("RGB")))
        except UnidentifiedImageError:  # then audio, or neither
            samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
            mime_type = AUDIO_MIME.get(soundfile.info(io.BytesIO(data)).format)
            reading = audio_watermark.read(samples, rate)
        mark = {"scheme": reading.scheme, "detected": reading.detected,
                "payload": dataclasses.asdict(reading.payload) if reading.payload else None}
        if isinstance(reading, audio_watermark.AudioReading):
            mark |= {"present": reading.present, "score": round(reading.score, 1), "seconds": round(reading.seconds, 2)}
        manifest = (read_manifest(data, mime_type, root or _default_root()) if mime_type
                    else ManifestReport(present=False))  # a container C2PA does not cover (Ogg)
    except (soundfile.LibsndfileError, KeyError, ProvenanceError) as exc:
        typer.echo(f"livegen: cannot verify {file}: {exc}", err=True)
        raise typer.Exit(2) from exc
    report = {"file": str(file), "watermark": mark, "content_credentials": dataclasses.asdict(manifest)}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(_verify_text(report))
    if manifest.present and not manifest.valid:
        raise typer.Exit(1)


AUDIO_MIME = {"WAV": "audio/wav", "MP3": "audio/mpeg", "FLAC": "audio/flac"}  # what C2PA reads, by soundfile format


def _default_root() -> Path | None:
    root = Settings().safety.keys / "root.pem"
    return root if root.is_file() else None


def _verify_text(report: dict) -> str:
    mark, c2pa = report["watermark"], report["content_credentials"]
    lines = [report["file"]]
    counted = "utterance" if "present" in mark else "frame"
    if mark["detected"]:
        payload = mark["payload"]
        lines.append(f"  watermark ({mark['scheme']}): server tag {payload['server']:#06x}, "
                     f"{counted} {payload['counter']}")
    elif mark.get("present"):
        lines.append(f"  watermark ({mark['scheme']}): present, but its payload could not be read "
                     f"({mark['seconds']} s read: too short or too damaged)")
    else:
        lines.append(f"  watermark ({mark['scheme']}): none found")
    if not c2pa["present"]:
        lines.append("  Content Credentials: none")
    else:
        state = "valid" if c2pa["valid"] else "INVALID"
        trust = "trusted" if c2pa["trusted"] else "not trusted (give --root)"
        lines.append(f"  Content Credentials: {state}, {trust}; signed by {c2pa['signer']}, "
                     f"made with {c2pa['claim_generator']}")
        for action in c2pa["actions"]:
            lines.append(f"    action {action.get('action')}: {action.get('digitalSourceType', '')}")
        if c2pa["generation"]:
            lines.append("    generation: " + ", ".join(f"{k}={v}" for k, v in c2pa["generation"].items()))
        lines.extend(f"    problem: {error}" for error in c2pa["errors"])
    return "\n".join(lines)


train_app = typer.Typer(
    help="Train livegen's own emoji model, stage by stage (each resumes from its checkpoint).", no_args_is_help=True
)
app.add_typer(train_app, name="train")
WorkdirOption = Annotated[Path, typer.Option(help="Work folder for the dataset, checkpoints and models.")]
StepsOption = Annotated[int | None, typer.Option(help="Training steps; the recipe's if absent.")]
TrainDeviceOption = Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")]
WORKDIR = Path("build/emoji")
STAGES = ("autoencoder", "decoder", "teacher", "student", "sharpen", "recall", "classifier")


def _train_stage(stage: str, workdir: Path, steps: int | None, device: str, student_folder: Path | None = None) -> None:
    """One stage into workdir/`stage`; `student_folder`: the trained student recall and adapt start from."""
    from livegen.training import adversarial, autoencoder, classifier, distill, reading, recall, teacher
    from livegen.training.dataset import DatasetError

    _quiet_libraries()
    train = {"autoencoder": autoencoder.train, "decoder": autoencoder.refine_decoder, "teacher": teacher.train,
             "student": distill.train, "sharpen": adversarial.train, "recall": recall.train,
             "adapt": reading.train, "classifier": classifier.train}[stage]  # fmt: skip
    start = {} if student_folder is None else {"student_folder": student_folder}
    try:
        train(workdir, steps=steps, device=device, **start)
    except DatasetError as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{stage}: done, in {workdir / stage}")
    if stage in ("autoencoder", "decoder"):
        typer.echo(f"{stage}: reconstruction PSNR {autoencoder.stage_psnr(workdir, stage):.1f} dB")


@train_app.command("data")
def train_data(workdir: WorkdirOption = WORKDIR) -> None:
    """Render and caption the emoji dataset (Debian's fonts-noto-color-emoji), embed the captions."""
    from livegen.training.dataset import DatasetError, build
    from livegen.training.text import embed_captions

    _quiet_libraries()
    try:
        count = build(workdir)
    except DatasetError as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(2) from exc
    embed_captions(workdir)
    typer.echo(f"{workdir}: {count} emoji rendered and captioned")


def _stage_command(stage: str, doc: str) -> None:
    def command(workdir: WorkdirOption = WORKDIR, steps: StepsOption = None, device: TrainDeviceOption = "auto") -> None:
        _train_stage(stage, workdir, steps, device)

    command.__doc__ = doc
    train_app.command(stage)(command)


_stage_command("autoencoder", "Train the AutoencoderTiny and encode the dataset.")
_stage_command("decoder", "Sharpen the decoder alone on the frozen latents.")
_stage_command("teacher", "Train the teacher diffusion UNet (many-step sampling).")
_stage_command("student", "Distil the 1-4 step student from the teacher (latent consistency distillation).")
_stage_command("sharpen", "Sharpen the student against a discriminator (adversarial diffusion distillation).")
_stage_command("classifier", "Train the classifier whose features `livegen eval` measures in.")


@train_app.command("adopt-autoencoder")
def train_adopt_autoencoder(
    folder: Annotated[Path, typer.Argument(help="A trained AutoencoderTiny folder, e.g. livegen/weights/emoji/vae.")],
    workdir: WorkdirOption = WORKDIR,
    device: TrainDeviceOption = "auto",
) -> None:
    """Use a trained autoencoder for the autoencoder and decoder stages instead of training them."""
    from livegen.training import autoencoder

    _quiet_libraries()
    autoencoder.adopt(workdir, folder, device)
    typer.echo(f"{folder}: adopted as {workdir / 'autoencoder'} and {workdir / 'decoder'}; reconstruction PSNR "
               f"{autoencoder.stage_psnr(workdir, 'decoder'):.1f} dB")


@train_app.command("recall")
def train_recall(
    student: Annotated[Path | None, typer.Option("--from", help="A trained student pipeline folder to start from, "
                                                  "e.g. livegen/weights/emoji; the work folder's sharpened one if absent.")] = None,
    workdir: WorkdirOption = WORKDIR,
    steps: StepsOption = None,
    device: TrainDeviceOption = "auto",
) -> None:
    """Sharpen the student again, each emoji drawn from its name: the text livegen conditions on
    (models/concepts.py). Into WORKDIR/recall, which `export` then writes."""
    _train_stage("recall", workdir, steps, device, student)


@train_app.command("adapt")
def train_adapt(
    student: Annotated[Path, typer.Argument(help="A trained student pipeline folder, e.g. livegen/weights/emoji.")],
    workdir: WorkdirOption = WORKDIR,
    steps: StepsOption = None,
    device: TrainDeviceOption = "auto",
) -> None:
    """Teach a student trained on padded prompts to read their real tokens (one short text forward
    per new prompt; its own padded reading is the target), into WORKDIR/adapt, which `export` then
    writes. Needs the dataset and the autoencoder stages (or `adopt-autoencoder` of the student's own)."""
    _train_stage("adapt", workdir, steps, device, student)


@train_app.command("concepts")
def train_concepts(
    folder: Annotated[Path, typer.Argument(help="A model pipeline folder, e.g. livegen/weights/emoji.")],
    workdir: WorkdirOption = WORKDIR,
) -> None:
    """Write the dataset's concept index into a model folder (`export` writes it too): livegen then
    draws each prompt as the emoji it most likely means (models/concepts.py)."""
    from livegen.training.export import concept_index

    _quiet_libraries()
    concept_index(workdir).write(folder)
    typer.echo(f"{folder}: concept index written")


@train_app.command("export")
def train_export(
    workdir: WorkdirOption = WORKDIR,
    to: Annotated[
        Path | None,
        typer.Option("--to", "--output", help="Student pipeline folder; WORKDIR/export if absent. The package's shipped "
                     "weights change only when named here (livegen/weights/emoji in a source checkout)."),
    ] = None,
) -> None:
    """Write the student and the teacher (WORKDIR/teacher/pipeline) as diffusers pipelines."""
    from livegen.training.export import default_target, export

    _quiet_libraries()
    target = to or default_target(workdir)
    size = export(workdir, target)
    typer.echo(f"{target}: student pipeline, {size / 1e6:.1f} MB")


@train_app.command("all")
def train_all(workdir: WorkdirOption = WORKDIR, device: TrainDeviceOption = "auto") -> None:
    """Every stage in order, from the dataset to WORKDIR/export (what `make model` runs); the
    shipped weights are left alone (`livegen train export --to` installs a build)."""
    if not (workdir / "images.npy").is_file():
        train_data(workdir)
    for stage in STAGES:
        _train_stage(stage, workdir, None, device)
    train_export(workdir, None)


@app.command("eval")
def evaluate(
    workdir: WorkdirOption = WORKDIR,
    student: Annotated[Path | None, typer.Option(help="Student pipeline; the shipped one if absent.")] = None,
    grid: Annotated[Path | None, typer.Option(help="Picture grid (prompts x sampler settings); "
                                              "WORKDIR/model-grid.png if absent.")] = None,
    output: Annotated[Path | None, typer.Option(help="Results (JSON); WORKDIR/eval.json if absent.")] = None,
    device: TrainDeviceOption = "auto",
) -> None:
    """Prompt accuracy and KID of the student (1-4 steps; the shipped one unless told) and, where
    WORKDIR has the teacher `make model` trains, the teacher (1-50 steps). Makes what WORKDIR lacks
    first: the dataset (seconds) and the evaluation's classifier (80 min on a 2-core CPU)."""
    from livegen.models.embedded import EMBEDDED_MODEL
    from livegen.training.dataset import DatasetError
    from livegen.training.evaluate import evaluate as run_eval
    from livegen.training.evaluate import markdown_table, prepare

    _quiet_libraries()
    student = student or EMBEDDED_MODEL
    try:
        prepare(workdir, student, device)
    except DatasetError as exc:
        typer.echo(f"livegen: {exc}", err=True)
        raise typer.Exit(2) from exc
    grid = grid or workdir / "model-grid.png"
    output = output or workdir / "eval.json"
    if not (workdir / "teacher" / "pipeline" / "model_index.json").is_file():
        typer.echo(f"{workdir} has no teacher (make model trains it): the student and reference rows only", err=True)
    rows = run_eval(workdir, student, grid=grid, output=output)
    typer.echo(markdown_table(rows))
    typer.echo(f"results: {output}; grid: {grid}")


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


ModelPathOption = Annotated[Path | None, typer.Option(help="Pipeline folder; livegen's own emoji model if absent.")]
BenchSizeOption = Annotated[str | None, typer.Option(help="WxH; the model's own size if absent.")]
QuickOption = Annotated[bool, typer.Option(help="Smoke-test mode: a few frames, not figures.")]
PeersOption = Annotated[bool, typer.Option(help="Also run StreamDiffusion (builds its own venv once).")]
OutputOption = Annotated[Path, typer.Option(help="Folder for the JSON, markdown and plots.")]
RESULTS = Path("bench-results")


def _peer(config: ModelConfig, peers: bool, quick: bool) -> dict | None:
    from livegen.bench.suite import streamdiffusion_peer

    return streamdiffusion_peer(config, 5 if quick else 50) if peers else None


def _peer_python(peers: bool) -> Path | None:
    """StreamDiffusion's environment's python (built on first use) when peers are asked for."""
    from livegen.bench.streamdiffusion import ensure_venv
    from livegen.bench.suite import PEER_VENV

    return ensure_venv(PEER_VENV) if peers else None


def _show(output: Path, scenario: str) -> None:
    typer.echo((output / f"{scenario}.md").read_text())
    typer.echo(f"results: {output / (scenario + '.json')}")


@bench_app.command("all")
def bench_all(model: ModelPathOption = None, size: BenchSizeOption = None, quick: QuickOption = False,
              peers: PeersOption = False, output: OutputOption = RESULTS) -> None:
    """The standard set (cold, warm, interactive, load, camera) and summary.md with the targets."""
    from livegen.bench.suite import run

    _quiet_libraries()
    run(_bench_model(model, size), quick, peers, output)
    _show(output, "summary")


@bench_app.command("cold")
def bench_cold(model: ModelPathOption = None, size: BenchSizeOption = None,
               runs: Annotated[int, typer.Option(help="Cold starts.")] = 3,
               frames: Annotated[int, typer.Option(help="Warm frames per start, for the median.")] = 20,
               quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """`livegen serve` process start to /readyz, and a new connection's first frame against the warm median."""
    from livegen.bench.cold import run

    _quiet_libraries()
    run(_bench_model(model, size), 1 if quick else runs, 3 if quick else frames, output)
    _show(output, "cold")


@bench_app.command("warm")
def bench_warm(model: ModelPathOption = None, size: BenchSizeOption = None,
               frames: Annotated[int, typer.Option(help="Measured frames per row, in interleaved rounds.")] = 50,
               block: Annotated[int, typer.Option(help="Frames per row in each round.")] = 5,
               quick: QuickOption = False, peers: PeersOption = False, output: OutputOption = RESULTS) -> None:
    """One session's warm frames, interleaved: livegen, direct diffusers (plain, tuned), naive server, StreamDiffusion."""
    from livegen.bench.warm import QUICK, run

    _quiet_libraries()
    run(_bench_model(model, size), output=output, peer_python=_peer_python(peers),
        **(QUICK if quick else {"rounds": max(2, frames // block), "block": block}))
    _show(output, "warm")


@bench_app.command("load")
def bench_load(model: ModelPathOption = None, size: BenchSizeOption = None,
               seconds: Annotated[float, typer.Option(help="Measured seconds per row.")] = 10.0,
               quick: QuickOption = False, peers: PeersOption = False, output: OutputOption = RESULTS) -> None:
    """1 to 32 concurrent sessions, micro-batching on and off: frames/s and p99."""
    from livegen.bench.load import run

    _quiet_libraries()
    config = _bench_model(model, size)
    run(config, 0.5 if quick else seconds, output, _peer(config, peers, quick))
    _show(output, "load")


@bench_app.command("ray")
def bench_ray(model: ModelPathOption = None, size: BenchSizeOption = None,
              seconds: Annotated[float, typer.Option(help="Measured seconds per row.")] = 10.0,
              quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """Ray Serve against the plain server: the proxy's cost at 1-32 sessions, 1 and 2 replicas, a drain."""
    from livegen.bench.scaleout import run

    _quiet_libraries()
    run(_bench_model(model, size), 1.0 if quick else seconds, output, quick)
    _show(output, "ray")


@bench_app.command("speech")
def bench_speech(rounds: Annotated[int, typer.Option(help="Times each reply is spoken.")] = 5,
                 quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """Time to first sound for agent replies (1, 4 and 8 voices at once, and whole-reply-first); underruns;
    barge-in; what moderation and the watermark cost."""
    from livegen.bench.speech import run

    _quiet_libraries()
    run(1 if quick else rounds, output, quick)
    _show(output, "speech")


@bench_app.command("voices")
def bench_voices(quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """English voices compared: word error rate (pocketsphinx), real-time factor, first audio, size."""
    from livegen.bench.voices import run

    _quiet_libraries()
    run(output, quick)
    _show(output, "voices")


@bench_app.command("audio-watermark")
def bench_audio_watermark(
    quick: QuickOption = False, output: OutputOption = RESULTS,
    perth: Annotated[Path | None, typer.Option(
        help="Also measure Resemble AI's Perth in this virtual environment (made there if missing).")] = None,
) -> None:
    """The speech watermark: its cost per chunk beside synthesis, segmental SNR, the payload after resampling,
    MP3, Opus and cuts, false positives; Perth beside it with --perth."""
    from livegen.bench.audio_watermark import run

    _quiet_libraries()
    run(output, quick, perth)
    _show(output, "audio-watermark")


@bench_app.command("safety")
def bench_safety(model: ModelPathOption = None, size: BenchSizeOption = None,
                 frames: Annotated[int, typer.Option(help="Warm frames with safety on, and as many off.")] = 120,
                 quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """Cost of moderation, watermark and Content Credentials per frame; watermark robustness."""
    from livegen.bench.safety import run

    _quiet_libraries()
    run(_bench_model(model, size), 6 if quick else frames, output, quick)
    _show(output, "safety")


@bench_app.command("access")
def bench_access(model: ModelPathOption = None, size: BenchSizeOption = None,
                 frames: Annotated[int, typer.Option(help="Frames through a server with keys, as many without.")] = 120,
                 seconds: Annotated[float, typer.Option(help="Measured seconds of inputs at 30/s.")] = 40.0,
                 quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """Cost of API keys, tokens and per-client limits per input (target: 0.2 ms at p50) and per session."""
    from livegen.bench.access import run

    _quiet_libraries()
    # Quick mode without --model: a tiny random pipeline, built in a temporary folder.
    results = run(None if quick and model is None else _bench_model(model, size), 6 if quick else frames,
                  2.0 if quick else seconds, output, quick)
    _show(output, "access")
    if not results["passed"]:
        raise typer.Exit(1)


@bench_app.command("gpu")
def bench_gpu(quick: QuickOption = False,
              cpu: Annotated[bool, typer.Option(help="The same path on tiny pipelines, on the CPU: a smoke test.")] = False,
              cases: Annotated[str | None, typer.Option(help="Comma-separated words each chosen case's label holds.")] = None,
              budget_s: Annotated[float | None, typer.Option(help="Skip the cases that would not fit.")] = None,
              cache: Annotated[Path | None, typer.Option(help="Where the built pipelines go.")] = None,
              moderation: Annotated[bool, typer.Option(
                  help="Check prompts against the policy (needs moderation's MiniLM installed).")] = True,
              peer_python: Annotated[Path | None, typer.Option(
                  help="A Python with StreamDiffusion, run against the served SD-Turbo case.")] = None,
              output: OutputOption = RESULTS / "gpu") -> None:
    """SD-Turbo, SDXL-Turbo, LCM and FLUX.1-schnell architectures (random weights) through the
    engine and the server on CUDA."""
    from livegen.bench.gpu import run

    _quiet_libraries()
    run(output, quick, cpu=cpu, cache=cache, budget_s=budget_s, only=cases, moderation=moderation,
        peer_python=peer_python)
    _show(output, "gpu")


@bench_app.command("gpu-pack")
def bench_gpu_pack(folder: Annotated[Path, typer.Option(help="Where the archives go (carried to the device).")] =
                   Path(".device"),
                   peer_python: Annotated[Path | None, typer.Option(
                       help="The StreamDiffusion venv's Python, to pack its stack too.")] = None) -> None:
    """Pack what `bench gpu` needs on the lent GPU machine beyond its image (livegen/bench/device_pack.py)."""
    from livegen.bench.device_pack import device_command, pack

    sizes = pack(Path.cwd(), folder, peer_python)
    mib = {key: round(value / 2**20, 1) for key, value in sizes.items() if key.endswith("bytes")}
    typer.echo(f"{', '.join(sizes['sites'])}: {mib['archive_bytes']} MiB beside a working tree of "
               f"{mib['tree_bytes']} MiB; {mib['left_bytes']} MiB left of what one call carries")
    if sizes["left_bytes"] < 0:
        raise typer.Exit(1)
    typer.echo(f"carry: {folder}; command: {device_command(folder, peer_python is not None)}")


@bench_app.command("model")
def bench_model(model: ModelPathOption = None, size: BenchSizeOption = None,
                images: Annotated[int, typer.Option(help="Measured images per row.")] = 50,
                quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """Noise to RGB pixels at 1, 2 and 4 steps, with the prompt embedding cached and not."""
    from livegen.bench.model import run

    _quiet_libraries()
    run(_bench_model(model, size), 3 if quick else images, output)
    _show(output, "model")


@bench_app.command("fuzz")
def bench_fuzz(url: Annotated[str | None, typer.Option(help="A running server; else one is started (embedded model, speech).")] = None,
               messages: Annotated[int, typer.Option(help="WebSocket messages in all.")] = 10_000,
               sessions: Annotated[int, typer.Option(help="Concurrent WebSocket sessions.")] = 8,
               seed: Annotated[int, typer.Option(help="The same seed sends the same messages.")] = 0,
               quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """Hostile and mutated messages: crashed sessions, lost and duplicated outcomes, HTTP 5xx; each must be 0."""
    from livegen.bench.fuzz import run

    _quiet_libraries()
    results = run(url, 400 if quick else messages, 4 if quick else sessions, seed, output)
    _show(output, "fuzz")
    if not results["passed"]:
        raise typer.Exit(1)


@bench_app.command("soak")
def bench_soak(url: Annotated[str | None, typer.Option(help="A running server; else one is started (speech on).")] = None,
               model: ModelPathOption = None, size: BenchSizeOption = None,
               sessions: Annotated[int, typer.Option(help="Concurrent WebSocket sessions.")] = 64,
               seconds: Annotated[float, typer.Option(help="How long the sessions send.")] = 60.0,
               warmup: Annotated[float, typer.Option(help="Seconds before the memory baseline.")] = 10.0,
               seed: Annotated[int, typer.Option(help="The same seed plays the same sessions.")] = 0,
               quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """Sessions that prompt, stream a camera, talk, drop and read slowly at once: nothing lost, nothing grows."""
    from livegen.bench.soak import run

    _quiet_libraries()
    serve_args = [*(["--model", str(model)] if model else []), *(["--size", size] if size else []),
                  *(["--max-batch", "2"] if quick else [])]  # quick: fewer batch shapes to warm
    results = run(url, serve_args, 8 if quick else sessions, 8.0 if quick else seconds, 2.0 if quick else warmup,
                  seed, output)
    _show(output, "soak")
    if not results["passed"]:
        raise typer.Exit(1)


def _bench_model(model: Path | None, size: str | None) -> ModelConfig:
    from livegen.config import embedded_model

    config = embedded_model() if model is None else ModelConfig(source=str(model))
    return ModelConfig(**{**config.model_dump(), "sizes": [size]}) if size else config


@bench_app.command("interactive")
def bench_interactive(model: ModelPathOption = None, size: BenchSizeOption = None,
                      seconds: Annotated[float, typer.Option(help="How long to send, per sending mode.")] = 20.0,
                      steps: Annotated[int, typer.Option(min=1, max=8, help="Denoising steps per frame.")] = 1,
                      quick: QuickOption = False, output: OutputOption = RESULTS) -> None:
    """A slider dragged at 30 inputs/s over the playground's protocol: latency, frames/s, superseded."""
    from livegen.bench.interactive import run

    _quiet_libraries()
    run(_bench_model(model, size), 2.0 if quick else seconds, steps, output)
    _show(output, "interactive")


@bench_app.command("camera")
def bench_camera(model: ModelPathOption = None, size: BenchSizeOption = None,
                 frames: Annotated[int, typer.Option(help="Camera frames per row.")] = 150,
                 quick: QuickOption = False, peers: PeersOption = False, output: OutputOption = RESULTS) -> None:
    """Camera filter on a still and a panning input: flicker, frames skipped, speed against peers."""
    from livegen.bench.camera import run

    _quiet_libraries()
    run(_bench_model(model, size), 6 if quick else frames, output, _peer_python(peers))
    _show(output, "camera")

