"""A warm CPU model kept in the cache folder, so that a later start serves it without diffusers.

Importing diffusers and transformers took about 2.5 s of a 7 s cold start on the 2-core CPU. A
model that runs as TorchScript traces with MiniLM as its text encoder and its guidance as an
embedding (the embedded model's kind) needs neither once its parts are traced. After its first
warm-up, `keep_pack` writes:

- the UNet with its guidance embedding, and the VAE's encoder and decoder, as saved traces, one
  per served size (the batch size stays symbolic), frozen: their weights are constants of one
  graph, not 644 submodules' attributes, so a start loads the three in 0.21 s instead of 0.59 s
  (the 2-core CPU), with the same outputs bit for bit (numerics-changing folds left off);
- the sampler as tables: each schedule the engine can ask for (pipeline.schedule_length) and, at
  each step, the numbers diffusers' scheduler gives. Its step is linear in the sample, the
  prediction and the noise drawn, and adding noise is linear in the image and the noise: the pack
  records those coefficients, probed from the scheduler itself and checked on random inputs,
  rather than restating its formulas;
- the tokenizer's tokenizer.json, the cache entry of the text encoder's ONNX graph, and the
  model's description;
- with a concept index, every concept name's states (3,655 names, 42 MB; read in 5.0 s at the first
  start), so a prompt drawn as a name costs no second forward;
- the manifest last, so a pack is whole or absent.

`load_pack` reads it when the model's files, the library versions and the model's settings are
those it was made with (they name it, with the livegen code they hold); the engine then warms it
as it warms any model. A pack that cannot be read is logged, and the model loads through diffusers
(as when there is none), which writes the pack again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from livegen import cache
from livegen.config import ModelConfig
from livegen.models.base import BatchSpec, ImageGenerator, ModelDescription, ModelError, PromptEmbedding
from livegen.models.concepts import Concepts
from livegen.models.devices import pick_device, pick_dtype
from livegen.models.embedded import NameStates, PromptReader, minilm_path
from livegen.models.onnx_text import Graph, OnnxTextEncoder
from livegen.models.pipeline import schedule_length
from livegen.models.sources import resolve_source
from livegen.models.tokens import Tokenizer

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
NAMES = "names.npy"  # the concept names' states (embedded.NameStates), their lengths in the manifest
# The modules whose code the traces and tables hold: an edit to one makes a new pack, even at the same version.
CODE = ("packed.py", "pipeline.py", "unet.py", "embedded.py")
LINEAR_RTOL = 1e-4  # a probed step must predict a random input's step this closely


class NotPackable(Exception):
    """The model's sampler is not the linear kind the tables can hold."""


def pack_name(config: ModelConfig) -> str:
    """The pack's folder in the cache: named by everything that shapes what it holds."""
    folder = resolve_source(config.source)
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    code = [Path(__file__).with_name(module) for module in CODE]
    parts = [config.model_dump_json(), torch.__version__, version("diffusers"), version("transformers"),
             *(cache.file_key(path) for path in [*files, *code])]
    with contextlib.suppress(ModelError):  # the text encoder of a folder without one (pipeline_components)
        parts.append(cache.file_key(minilm_path() / "model.safetensors"))
    return "packs/" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _kept_name(config: ModelConfig) -> tuple[str | None, bool]:
    """The pack's name (None for a source that does not resolve: the loader reports it), and
    whether the cache holds it whole."""
    try:
        name = pack_name(config)
    except ModelError:
        return None, False
    return name, cache.path_of(f"{name}/{MANIFEST}").is_file()


def has_pack(config: ModelConfig) -> bool:
    return _kept_name(config)[1]


# ---------------------------------------------------------------------- making a pack


def packable(generator: ImageGenerator) -> bool:
    from livegen.models.unet import StableDiffusionGenerator, StableDiffusionXLGenerator

    return (isinstance(generator, StableDiffusionGenerator) and not isinstance(generator, StableDiffusionXLGenerator)
            and generator.device.type == "cpu" and generator.acceleration == "TorchScript traces"
            and generator.reads_sentences and generator.guidance_embedding_dim is not None
            and generator.scheduler.order == 1)


class _Denoiser(torch.nn.Module):
    """The UNet and its guidance embedding, as the generator's loop calls them."""

    def __init__(self, generator):
        super().__init__()
        self.unet = generator.pipe.unet
        self.embed = generator.pipe.get_guidance_scale_embedding
        self.dim = generator.guidance_embedding_dim

    def forward(self, sample: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        cond = self.embed(w, embedding_dim=self.dim).to(sample.dtype)
        return self.unet(sample, t, encoder_hidden_states=hidden, timestep_cond=cond, return_dict=False)[0]


class _Stage(torch.nn.Module):
    """A generator's VAE stage (a method over tensors) with the VAE as a submodule, which tracing needs."""

    def __init__(self, vae: torch.nn.Module, stage: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.vae = vae
        self.stage = stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x)


def _probe(scheduler, total: int, index: int, t: torch.Tensor) -> list[float]:
    """Step `index` of the `total`-step schedule: [scale, sample, prediction, noise, image, image noise]
    coefficients, as diffusers' scheduler computes them."""
    scheduler.set_timesteps(total, device="cpu")
    scheduler.set_begin_index(index)
    scale = float(scheduler.scale_model_input(torch.ones(1, 1, 1, 1), t))
    rng = np.random.default_rng(index)
    a, b = rng.standard_normal(2)
    sample = torch.tensor([1.0, 0.0, 0.0, a]).reshape(1, 4, 1, 1)
    pred = torch.tensor([0.0, 1.0, 0.0, b]).reshape(1, 4, 1, 1)
    drawn = torch.randn((1, 4, 1, 1), generator=torch.Generator().manual_seed(0)).flatten().tolist()
    out = scheduler.step(pred, t, sample, generator=[torch.Generator().manual_seed(0)], return_dict=False)[0]
    out = out.flatten().tolist()
    c = out[2] / drawn[2]  # sample and prediction 0: the noise's share alone
    s, p = out[0] - c * drawn[0], out[1] - c * drawn[1]
    image, noise = torch.tensor([1.0, 0.0, a]).reshape(1, 3, 1, 1), torch.tensor([0.0, 1.0, b]).reshape(1, 3, 1, 1)
    i, n, added = scheduler.add_noise(image, noise, t.reshape(1)).flatten().tolist()
    linear = (abs(out[3] - (s * a + p * b + c * drawn[3])) <= LINEAR_RTOL * (1 + abs(out[3]))
              and abs(added - (i * a + n * b)) <= LINEAR_RTOL * (1 + abs(added)))
    if not linear:
        raise NotPackable(f"{type(scheduler).__name__}'s step {index} of {total} is not linear")
    return [scale, s, p, c, i, n]


def sampler_tables(scheduler, longest: int) -> tuple[list[list[list[float]]], str]:
    """For each schedule of 1 to `longest` steps, [timestep, *coefficients] at each step; and the
    timesteps' dtype."""
    scheduler = copy.deepcopy(scheduler)
    tables = []
    for total in range(1, longest + 1):
        scheduler.set_timesteps(total, device="cpu")
        timesteps = scheduler.timesteps.clone()
        tables.append([[float(t), *_probe(scheduler, total, index, t)] for index, t in enumerate(timesteps)])
    return tables, str(timesteps.dtype).removeprefix("torch.")


def _keep_traces(generator, name: str, width: int, height: int, t: torch.Tensor) -> None:
    """One size's traces, at batch 2 (the batch size stays symbolic); `name` has a {} for the part."""
    latents = torch.randn(2, *generator.latent_shape(width, height)).contiguous(memory_format=torch.channels_last)
    hidden = generator.encode_prompt("a pack").tensors["prompt_embeds"].repeat(2, 1, 1)
    pixels = torch.full((2, height, width, 3), 127, dtype=torch.uint8)
    traces = {"unet": torch.jit.trace(_Denoiser(generator), (latents, t, hidden, torch.ones(2)), check_trace=False),
              "encoder": torch.jit.trace(_Stage(generator.vae, generator.encode_pixels), pixels, check_trace=False),
              "decoder": torch.jit.trace(_Stage(generator.vae, generator.decode_on_device), latents, check_trace=False)}
    for part, trace in traces.items():
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.freeze(trace.eval(), optimize_numerics=False), buffer)
        cache.keep(name.format(part), buffer.getvalue())


@torch.inference_mode()
def keep_pack(generator: ImageGenerator, config: ModelConfig) -> None:
    """After the first warm-up of a packable model: write its pack, if the cache has none."""
    if not packable(generator):
        return
    name, kept = _kept_name(config)
    if kept or name is None:
        return
    try:
        tables, timestep_dtype = sampler_tables(generator.scheduler, generator.longest_schedule)
    except NotPackable as exc:
        log.info("%s: not kept for faster starts (%s)", generator.name, exc)
        return
    t = torch.tensor(tables[0][0][0]).to(getattr(torch, timestep_dtype))
    with warnings.catch_warnings():  # diffusers' shape checks become constants: expected
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for width, height in generator.description.sizes:
            _keep_traces(generator, f"{name}/{{}}-{width}x{height}.pt", width, height, t)
    cache.keep(f"{name}/{TOKENIZER}", generator.pipe.tokenizer.backend_tokenizer.to_str().encode())
    name_tokens = None
    if generator.concepts is not None and generator.real_tokens:
        kept_names = generator.read_prompt.read_names(generator.concepts.names_in_order())
        cache.keep(f"{name}/{NAMES}", kept_names.npy())
        name_tokens = kept_names.lengths
    manifest = {"description": dataclasses.asdict(generator.description), "latent_channels": generator.latent_shape(8, 8)[0],
                "vae_scale": generator.vae_scale, "real_tokens": generator.real_tokens,
                "max_length": generator.pipe.tokenizer.model_max_length,
                "text_graph": generator.text_graph.name,
                "name_tokens": name_tokens, "timestep_dtype": timestep_dtype, "init_noise_sigma": float(generator.scheduler.init_noise_sigma),
                "schedules": tables}
    cache.keep(f"{name}/{MANIFEST}", json.dumps(manifest).encode())
    log.info("%s: kept in the cache folder (%s); later starts load it without diffusers", generator.name, name)


# ---------------------------------------------------------------------- serving from a pack


def _path(name: str) -> Path:
    """The pack's file `name`, marked used."""
    if (path := cache.use(name)) is None:
        raise FileNotFoundError(f"{name} is missing from the cache folder")
    return path


def _read(name: str) -> bytes:
    return _path(name).read_bytes()


def _not_exported() -> bytes:
    raise FileNotFoundError("the text encoder's graph is missing from the cache folder, or damaged")


def _module(name: str) -> torch.jit.ScriptModule:
    return torch.jit.load(io.BytesIO(_read(name)), map_location="cpu")


def load_pack(config: ModelConfig) -> PackedGenerator | None:
    """The model from its pack, or None when there is none (or it cannot be read: logged)."""
    if config.compile or pick_device(config.device).type != "cpu":
        return None
    name, kept = _kept_name(config)
    if not kept:
        return None
    try:
        return PackedGenerator(name, json.loads(_read(f"{name}/{MANIFEST}")), Concepts.read(resolve_source(config.source)))
    except Exception:
        log.warning("%s: the kept pack %s could not be read; loading through diffusers, which keeps it again",
                    config.display_name, name, exc_info=True)
        cache.path_of(f"{name}/{MANIFEST}").unlink(missing_ok=True)
        return None


class PackedGenerator(ImageGenerator):
    """A packable model served from its pack: the same stages, frames and sentence vectors as the
    diffusers-loaded generator it was made from (tests/test_packed.py compares them)."""

    def __init__(self, name: str, manifest: dict, concepts: Concepts | None = None):
        """`concepts`: the model folder's concept index (its files name the pack, so it is the one traced)."""
        self.concepts = concepts
        kept_names = None
        if concepts is not None and manifest["name_tokens"] is not None:
            states = np.load(_path(f"{name}/{NAMES}"), mmap_mode="r")
            kept_names = NameStates(concepts.names_in_order(), states, manifest["name_tokens"])
        self.read_prompt = PromptReader(self, kept_names)
        description = manifest["description"]
        self.description = ModelDescription(**{**description, "sizes": [tuple(size) for size in description["sizes"]]})
        self.device = torch.device("cpu")
        self.dtype = pick_dtype(self.description.dtype, self.device)
        self.channels, self.vae_scale = manifest["latent_channels"], manifest["vae_scale"]
        self.real_tokens, self.max_length = manifest["real_tokens"], manifest["max_length"]
        self.timestep_dtype = getattr(torch, manifest["timestep_dtype"])
        self.init_noise_sigma = manifest["init_noise_sigma"]
        self.schedules = manifest["schedules"]
        self.threads = torch.get_num_threads()  # on the thread that loads it and serves it (DiffusersGenerator's)
        self.text_forward = OnnxTextEncoder(Graph(manifest["text_graph"], _not_exported), self.threads)
        self.tokenizer = Tokenizer(_read(f"{name}/{TOKENIZER}").decode(), self.max_length)
        self.unets, self.encoders, self.decoders = {}, {}, {}
        for width, height in self.description.sizes:
            self.unets[(width, height)] = _module(f"{name}/unet-{width}x{height}.pt")
            self.encoders[(width, height)] = _module(f"{name}/encoder-{width}x{height}.pt")
            self.decoders[self.latent_shape(width, height)[1:]] = _module(f"{name}/decoder-{width}x{height}.pt")
        log.info("loaded %s from its pack %s (no diffusers)", self.name, name)

    @property
    def reads_sentences(self) -> bool:
        return True

    def describe_acceleration(self) -> dict:
        return {"mode": "TorchScript traces", "kept": True, "threads": self.threads}

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        return (self.channels, height // self.vae_scale, width // self.vae_scale)

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        hidden, sentence, drawn = self.read_prompt(prompt)
        return PromptEmbedding({"prompt_embeds": hidden.to(self.dtype)}, sentence=sentence, drawn=drawn)

    def tokenize(self, text: str) -> tuple[torch.Tensor, int]:
        ids, mask = self.tokenizer([text], pad_to=self.max_length)
        return ids, int(mask.sum())

    def _steps(self, spec: BatchSpec) -> list[list[float]]:
        """As DiffusersGenerator.schedule: the last `steps` of the schedule's steps."""
        total = schedule_length(spec, len(self.schedules))
        return self.schedules[total - 1][total - spec.steps:]

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        _, height, width, _ = images.shape
        return self.encoders[(width, height)](torch.from_numpy(images))

    @torch.inference_mode()
    def denoise(self, spec, prompts, noise, image_latents, seeds, should_stop):
        batch = noise.shape[0]
        steps = self._steps(spec)
        hidden = PromptEmbedding.stack(prompts)["prompt_embeds"]
        w = torch.full((batch,), spec.guidance - 1.0)
        unet = self.unets[(spec.width, spec.height)]
        if image_latents is None:
            latents = noise * self.init_noise_sigma
        else:
            image, image_noise = steps[0][5:7]
            latents = image * image_latents + image_noise * noise
        generators = self.generators(seeds)
        for t, scale, on_sample, on_pred, on_noise, _, _ in steps:
            if should_stop():
                return None
            model_input = (latents * scale).contiguous(memory_format=torch.channels_last)
            pred = unet(model_input, torch.tensor(t, dtype=self.timestep_dtype), hidden, w)
            latents = on_sample * latents + on_pred * pred
            if on_noise:
                latents = latents + on_noise * torch.cat(
                    [torch.randn((1, *pred.shape[1:]), generator=g, dtype=pred.dtype) for g in generators])
        return latents

    @torch.inference_mode()
    def decode_on_device(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoders[tuple(latents.shape[2:])](latents)
