"""`livegen eval`: does the picture show the emoji the prompt asked for, and do the pictures
look like real emoji? Measured for the teacher at many step counts and the student at 1-4.

- Prompt accuracy: each generated image is matched to its nearest real emoji (cosine similarity
  in the classifier's feature space); top-1 / top-5 count a hit when an acceptable emoji is
  among the nearest 1 / 5. Two splits: captions of a fixed random sample of the dataset plus
  hand-written paraphrases (livegen/training/paraphrases.json); and the natural-prompt split
  (natural_prompts.json: everyday prompts written apart from the captions), also scored on
  the prompts no training caption equals ("unseen").
- Text-only references: each prompt's nearest training caption by MiniLM sentence similarity,
  read as its emoji (`caption_lookup`): what the text encoder alone tells apart, with no picture;
  and the concept the student's index (models/concepts.py) draws the prompt as, where it has one.
- Each model is drawn as livegen serves it (with its concept index); the student also as typed
  (without the index) and through `pipe(prompt)`.
- KID (Binkowski et al. 2018): unbiased squared MMD with the cubic polynomial kernel between
  generated and real features, averaged over random subsets.

Both models run through plain diffusers StableDiffusionPipeline, as a user would run them.

What it needs, and makes when the work folder lacks it (so the shipped model is measured without
`make model`, from an installed package too): the dataset (rendered in seconds), the classifier
(trained on the dataset and its round trips through the work folder's autoencoder or else the
student's own; 80 min on a 2-core CPU, under a minute on a GPU). The teacher rows need the teacher
`make model` trains; without it only the student and reference rows are measured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from livegen.models.concepts import Concepts
from livegen.models.embedded import EMBEDDED_MODEL, GUIDANCE, pipeline_components, reads_real_tokens, real_token_embeds
from livegen.training import classifier, dataset
from livegen.training.dataset import EmojiDataset
from livegen.training.recipe import SEED

PARAPHRASES = Path(__file__).resolve().parent / "paraphrases.json"
NATURAL = Path(__file__).resolve().parent / "natural_prompts.json"
CAPTION_PROMPTS = 300
SETTINGS = (("teacher", 1), ("teacher", 2), ("teacher", 4), ("teacher", 8), ("teacher", 25), ("teacher", 50),
            ("student", 1), ("student", 2), ("student", 4))  # fmt: skip
TEXT_ONLY = "MiniLM's nearest training caption (no picture)"
CONCEPT_ONLY = "the student's concept index (no picture)"
GRID_PROMPTS = ("a kitty", "a red car", "a face with heart eyes", "a slice of pizza", "a rocket",
                "the flag of japan", "a thumbs up with dark skin", "a snowman")  # fmt: skip


@dataclass(frozen=True)
class Prompt:
    text: str
    targets: tuple[int, ...]  # dataset indices of the emoji that count as right


@dataclass(frozen=True)
class Row:
    model: str
    steps: int | None  # None for the reference rows
    top1: float
    top5: float
    kid: float | None  # None for the text-only row: it makes no pictures
    natural_top1: float
    natural_top5: float
    natural_unseen_top1: float
    natural_pixel_top1: float | None  # by the nearest round trip in pixel space (`pixel_nearest`); None without pictures


def eval_prompts(dataset: EmojiDataset, paraphrases: Path = PARAPHRASES, count: int = CAPTION_PROMPTS) -> list[Prompt]:
    """Captions of `count` random emoji, then the paraphrases; an identical render also counts."""
    rng = np.random.default_rng(SEED)
    twins = dataset.same_picture()
    picked = rng.choice(len(dataset), size=min(count, len(dataset)), replace=False)
    prompts = [Prompt(str(rng.choice(dataset.records[i].captions)), twins[i]) for i in picked]
    return prompts + listed_prompts(dataset, paraphrases)


def listed_prompts(dataset: EmojiDataset, path: Path) -> list[Prompt]:
    """A file's prompts with the emoji each counts as right (and any identical render)."""
    twins = dataset.same_picture()
    prompts = []
    for item in json.loads(path.read_text()):
        wanted = {j for char in item["emoji"] for j in twins[dataset.index_of(char)]}
        prompts.append(Prompt(item["prompt"], tuple(sorted(wanted))))
    return prompts


def ranked_accuracy(similarity: torch.Tensor, targets: list[tuple[int, ...]], k: int = 5) -> tuple[float, float]:
    """Share of rows (queries x emoji) whose most similar emoji (top-1) / any of the k most is a target."""
    return hit_rates(similarity.topk(k, dim=1).indices.tolist(), targets, k)


def hit_rates(rankings: list[list[int]], targets: list[tuple[int, ...]], k: int = 5) -> tuple[float, float]:
    """Share of queries whose first-ranked emoji (top-1) / any of the first k is a target."""
    top1 = np.mean([ranked[0] in wanted for ranked, wanted in zip(rankings, targets)])
    topk = np.mean([any(r in wanted for r in ranked[:k]) for ranked, wanted in zip(rankings, targets)])
    return float(top1), float(topk)


def retrieval_accuracy(
    queries: torch.Tensor, gallery: torch.Tensor, targets: list[tuple[int, ...]], k: int = 5
) -> tuple[float, float]:
    """Share of queries whose nearest gallery item (top-1) / any of the k nearest is a target."""
    centre = gallery.mean(dim=0)  # cosine about the gallery's mean, so shared feature directions do not dominate
    similarity = F.normalize(queries - centre, dim=1) @ F.normalize(gallery - centre, dim=1).T
    return ranked_accuracy(similarity, targets, k)


def caption_lookup(data: EmojiDataset, prompts: list[str], batch: int = 256) -> torch.Tensor:
    """Each prompt's MiniLM sentence similarity to every emoji's nearest training caption (prompts x
    emoji). Read as the nearest emoji, it is what the text encoder alone tells apart: a baseline for
    how much of a prompt the model's conditioning could carry."""
    from livegen.safety.moderation import minilm_embedder

    embed = minilm_embedder()
    owners = [i for i, record in enumerate(data.records) for _ in record.training_captions]
    captions = [caption for record in data.records for caption in record.training_captions]
    vectors = np.concatenate([embed(captions[i : i + batch]) for i in range(0, len(captions), batch)])
    queries = np.concatenate([embed(prompts[i : i + batch]) for i in range(0, len(prompts), batch)])
    nearest = np.full((len(data), len(prompts)), -np.inf, np.float32)
    np.maximum.at(nearest, owners, vectors @ queries.T)
    return torch.from_numpy(nearest.T.copy())


@torch.no_grad()
def round_trips(vae, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """The images through the autoencoder, encoded and decoded, in [-1, 1]."""
    return torch.cat([vae.decode(vae.encode(images[i : i + batch]).latents).sample.clamp(-1, 1)
                      for i in range(0, len(images), batch)])


def pixel_nearest(images: torch.Tensor, gallery: torch.Tensor, targets: list[tuple[int, ...]]) -> float:
    """Share of images whose nearest gallery image by pixel distance is a target: a judge with no
    trained features (the one issue 25's outside check uses, against the real emoji's round trips)."""
    nearest = torch.cdist(images.flatten(1).float(), gallery.flatten(1).float()).argmin(1).tolist()
    return float(np.mean([n in wanted for n, wanted in zip(nearest, targets)]))


def kid(x: torch.Tensor, y: torch.Tensor, subset_size: int = 100, subsets: int = 50) -> float:
    """Kernel Inception Distance in any feature space: mean unbiased MMD^2 over random subsets."""
    generator = torch.Generator().manual_seed(SEED)
    m = min(subset_size, len(x), len(y))
    dim = x.shape[1]
    scores = []
    for _ in range(subsets):
        a = x[torch.randperm(len(x), generator=generator)[:m]].double()
        b = y[torch.randperm(len(y), generator=generator)[:m]].double()
        k_aa, k_bb, k_ab = ((p @ q.T / dim + 1) ** 3 for p, q in ((a, a), (b, b), (a, b)))
        off_diagonal = (k_aa.sum() - k_aa.trace() + k_bb.sum() - k_bb.trace()) / (m * (m - 1))
        scores.append((off_diagonal - 2 * k_ab.mean()).item())
    return float(np.mean(scores))


def load_pipeline(path: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, **pipeline_components(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int, guidance: float, real_tokens: bool, concepts: Concepts | None = None,
             batch: int = 128) -> torch.Tensor:
    """One image per prompt in [-1, 1]; image i always starts from the noise of seed SEED + i.
    `real_tokens`: conditioned as livegen serves such a model (embedded.real_token_embeds), else
    as `pipe(prompt)` does. With `concepts`, each prompt is drawn as its nearest concept's name,
    as livegen serves a folder with a concept index (models/concepts.py)."""
    if concepts is not None:
        from livegen.safety.moderation import minilm_embedder

        embed = minilm_embedder()
        prompts = [concepts.drawn_text(p, embed, v) for p, v in zip(prompts, embed(prompts))]
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        generators = [torch.Generator().manual_seed(SEED + start + i) for i in range(len(chunk))]
        text: dict = {"prompt": chunk}
        if real_tokens:
            embeds = real_token_embeds(pipe.tokenizer, pipe.text_encoder, chunk + [""])
            text = {"prompt_embeds": embeds[:-1], "negative_prompt_embeds": embeds[-1:].expand(len(chunk), -1, -1)}
        out = pipe(**text, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="pt")
        images.append(out.images * 2 - 1)
    return torch.cat(images)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p) for p in pixels]


def save_grid(columns: dict[str, torch.Tensor], path: Path, scale: int = 2) -> None:
    """Rows: GRID_PROMPTS; columns: sampler settings."""
    tiles = {name: to_pil(images) for name, images in columns.items()}
    side = next(iter(tiles.values()))[0].width * scale
    grid = Image.new("RGB", (side * len(tiles), side * len(GRID_PROMPTS)), "white")
    for col, images in enumerate(tiles.values()):
        for row, image in enumerate(images):
            grid.paste(image.resize((side, side), Image.NEAREST), (col * side, row * side))
    grid.save(path)


def prepare(workdir: Path, student: Path = EMBEDDED_MODEL, device: str = "auto", progress: bool = True) -> None:
    """Make what the evaluation needs and the work folder lacks: the dataset, then the classifier."""
    if not (workdir / "images.npy").is_file():
        dataset.build(workdir, progress=progress)
    if not (workdir / "classifier" / "model.pt").is_file():
        classifier.train(workdir, device=device, progress=progress, vae_folder=student / "vae")


def evaluate(
    workdir: Path,
    student: Path = EMBEDDED_MODEL,
    guidance: float = GUIDANCE,
    grid: Path | None = None,
    progress: bool = True,
    output: Path | None = None,
) -> list[Row]:
    """Rows for the references, the teacher (where the work folder has one) and the student;
    written to `output` (workdir/eval.json if absent) and the picture grid to `grid` if given."""
    data = EmojiDataset.load(workdir)
    prompts = eval_prompts(data)
    natural = listed_prompts(data, NATURAL)
    texts = [p.text for p in prompts + natural]
    model = classifier.load(workdir)
    real = model.embed(data.tensor())
    folders = {"student": student, "teacher": workdir / "teacher" / "pipeline"}
    pipelines = {name: load_pipeline(f) for name, f in folders.items() if (f / "model_index.json").is_file()}
    real_tokens = {name: reads_real_tokens(folders[name]) for name in pipelines}
    concepts = {name: Concepts.read(folders[name]) for name in pipelines}
    seen = {c.lower() for record in data.records for c in record.training_captions}
    gallery = round_trips(pipelines["student"].vae, data.tensor()) if "student" in pipelines else data.tensor()
    unseen = [i for i, p in enumerate(natural) if p.text.lower() not in seen]

    def score(name: str, steps: int | None, images: torch.Tensor) -> Row:
        features = model.embed(images[: len(prompts)])
        natural_features = model.embed(images[len(prompts) :])
        top1, top5 = retrieval_accuracy(natural_features, real, [p.targets for p in natural])
        unseen_top1, _ = retrieval_accuracy(natural_features[unseen], real, [natural[i].targets for i in unseen])
        return Row(name, steps, *retrieval_accuracy(features, real, [p.targets for p in prompts]),
                   kid(features, real), top1, top5, unseen_top1,
                   pixel_nearest(images[len(prompts) :], gallery, [p.targets for p in natural]))

    # What the metrics say about the real emoji asked for, and about noise: the scale's two ends.
    rows = [score("real images", None, data.tensor()[[p.targets[0] for p in prompts + natural]])]
    noise = torch.rand((len(texts), 3, data.size, data.size), generator=torch.Generator().manual_seed(SEED))
    rows.append(score("uniform noise", None, noise * 2 - 1))
    lookup = caption_lookup(data, texts)
    natural_lookup = lookup[len(prompts) :]
    rows.append(Row(TEXT_ONLY, None, *ranked_accuracy(lookup[: len(prompts)], [p.targets for p in prompts]), None,
                    *ranked_accuracy(natural_lookup, [p.targets for p in natural]),
                    ranked_accuracy(natural_lookup[unseen], [natural[i].targets for i in unseen])[0], None))
    if concepts["student"] is not None:  # the concept the student is drawn from: right at best this often
        from livegen.safety.moderation import minilm_embedder

        index = concepts["student"]
        emoji_of = {record.captions[0]: i for i, record in enumerate(data.records)}  # concepts by name: any order
        embed = minilm_embedder()
        picks = [[emoji_of.get(index.name(c), -1) for c in index.ranked(t, embed, v)]
                 for t, v in zip(texts, embed(texts))]
        natural_picks = picks[len(prompts) :]
        rows.append(Row(CONCEPT_ONLY, None, *hit_rates(picks[: len(prompts)], [p.targets for p in prompts]), None,
                        *hit_rates(natural_picks, [p.targets for p in natural]),
                        hit_rates([natural_picks[i] for i in unseen], [natural[i].targets for i in unseen])[0], None))
    columns = {}
    # (row, pipeline, steps, real tokens, concepts): each model as livegen serves it, then the student
    # reading the prompt as typed, and through `pipe(prompt)`, as plain diffusers calls it.
    settings = [(name, name, steps, real_tokens[name], concepts[name]) for name, steps in SETTINGS if name in pipelines]
    if concepts["student"] is not None:
        settings.append(("student, prompt as typed", "student", 1, real_tokens["student"], None))
    if real_tokens["student"] or concepts["student"] is not None:
        settings.append(("student, pipe(prompt)", "student", 1, False, None))
    for label, name, steps, tokens, index in tqdm(settings, desc="evaluate", disable=not progress):
        pipe = pipelines[name]
        rows.append(score(label, steps, generate(pipe, texts, steps, guidance, tokens, index)))
        columns[f"{label} {steps}"] = generate(pipe, list(GRID_PROMPTS), steps, guidance, tokens, index)
    if grid is not None:
        grid.parent.mkdir(parents=True, exist_ok=True)
        save_grid(columns, grid)
    output = output or workdir / "eval.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| model | steps | top-1 | top-5 | KID | natural top-1 | natural top-5 | natural unseen top-1 | natural pixel top-1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.model} | {r.steps or '-'} | {r.top1:.1%} | {r.top5:.1%} | {'-' if r.kid is None else f'{r.kid:.3g}'} | {r.natural_top1:.1%} | "
              f"{r.natural_top5:.1%} | {r.natural_unseen_top1:.1%} | "
              f"{'-' if r.natural_pixel_top1 is None else f'{r.natural_pixel_top1:.1%}'} |" for r in rows]
    return "\n".join(lines)
