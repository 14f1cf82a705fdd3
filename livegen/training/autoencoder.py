"""Stage 1: the autoencoder. diffusers' AutoencoderTiny layout (TAESD-style, no attention, no
GroupNorm) so decoding a 64x64 frame costs a few milliseconds on a CPU.

Trained as a plain autoencoder (L1 + an edge term) with noise added to the latents, so the
decoder also renders the slightly-off latents a 1-step sampler produces. Afterwards the whole
dataset is encoded once (`latents.pt`) and the latent scaling factor is set to 1 / std.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

from livegen.models.devices import pick_device
from livegen.training import loop
from livegen.training.dataset import EmojiDataset
from livegen.training.recipe import AUTOENCODER, LATENT_CHANNELS, SEED, AutoencoderRecipe

SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def build(recipe: AutoencoderRecipe = AUTOENCODER) -> AutoencoderTiny:
    torch.manual_seed(SEED)
    return AutoencoderTiny(
        encoder_block_out_channels=(recipe.channels,) * len(recipe.encoder_blocks),
        decoder_block_out_channels=(recipe.channels,) * len(recipe.decoder_blocks),
        num_encoder_blocks=recipe.encoder_blocks,
        num_decoder_blocks=recipe.decoder_blocks,
        latent_channels=LATENT_CHANNELS,
    )


def edges(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.stack([SOBEL, SOBEL.T]).unsqueeze(1).to(images)
    flat = images.flatten(0, 1).unsqueeze(1)
    return F.conv2d(flat, kernel, padding=1)


def losses(vae: AutoencoderTiny, images: torch.Tensor, generator: torch.Generator, recipe: AutoencoderRecipe):
    latents = vae.encoder(images)
    noise = torch.randn(latents.shape, generator=generator).to(latents) * recipe.latent_noise
    decoded = vae.decoder(latents + noise * latents.detach().std())
    reconstruction = F.l1_loss(decoded, images)
    edge = F.l1_loss(edges(decoded), edges(images))
    penalty = latents.pow(2).mean()
    total = reconstruction + recipe.edge_weight * edge + recipe.latent_penalty * penalty
    return total, {"l1": reconstruction.item(), "edge": edge.item()}


def train(
    workdir: Path,
    recipe: AutoencoderRecipe = AUTOENCODER,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> AutoencoderTiny:
    dev = pick_device(device)
    images = EmojiDataset.load(workdir).tensor()
    vae = build(recipe).to(dev).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    total = steps or recipe.steps
    schedule = loop.warmup_cosine(optimizer, 100, total)

    def train_step(step: int, generator: torch.Generator) -> dict[str, float]:
        index = torch.randint(len(images), (recipe.batch_size,), generator=generator)
        loss, parts = losses(vae, images[index].to(dev), generator, recipe)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return parts

    stage = loop.Stage(workdir / "autoencoder")
    loop.run(stage, total, train_step, {"model": vae, "optimizer": optimizer, "schedule": schedule}, SEED, progress=progress)
    vae.eval()
    finish(vae, images, workdir, dev)
    return vae


@torch.no_grad()
def encode_all(vae: AutoencoderTiny, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.cat([vae.encoder(batch.to(device)).cpu() for batch in images.split(256)])


@torch.no_grad()
def finish(vae: AutoencoderTiny, images: torch.Tensor, workdir: Path, device: torch.device) -> None:
    """Encode the dataset, set the latent scale, save the model in diffusers format."""
    latents = encode_all(vae, images, device)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.cpu().save_pretrained(workdir / "autoencoder" / "model")
    torch.save(latents, workdir / "latents.pt")


def adopt(workdir: Path, folder: Path, device: str = "auto") -> AutoencoderTiny:
    """Take a trained autoencoder (a shipped model's `vae`) as both stages, so that new UNets learn
    the latent space its decoder already reads, without training one again."""
    dev = pick_device(device)
    vae = AutoencoderTiny.from_pretrained(folder).float().eval().to(dev)
    torch.save(encode_all(vae, EmojiDataset.load(workdir).tensor(), dev), workdir / "latents.pt")
    for stage in ("autoencoder", "decoder"):  # its latent scale as it is: what its UNet was trained with
        vae.cpu().save_pretrained(workdir / stage / "model")
    return vae


def load(workdir: Path, stage: str = "autoencoder") -> AutoencoderTiny:
    """The autoencoder as the `autoencoder` stage or (with a sharper decoder) the `decoder` stage left it."""
    return AutoencoderTiny.from_pretrained(workdir / stage / "model").eval()


def refine_decoder(
    workdir: Path,
    recipe: AutoencoderRecipe = AUTOENCODER,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> AutoencoderTiny:
    """Train the decoder alone on the stored latents (as SD's VAE decoder was fine-tuned): the
    latent space the diffusion models learn does not move, so this can run beside them."""
    dev = pick_device(device)
    images = EmojiDataset.load(workdir).tensor()
    latents = torch.load(workdir / "latents.pt")
    vae = load(workdir).to(dev)
    decoder = vae.decoder.train()
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=recipe.decoder_lr, weight_decay=0.0)
    total = steps or recipe.decoder_steps
    schedule = loop.warmup_cosine(optimizer, 100, total)
    spread = latents.std().item()

    def train_step(step: int, generator: torch.Generator) -> dict[str, float]:
        index = torch.randint(len(images), (recipe.batch_size,), generator=generator)
        noise = torch.randn(latents[index].shape, generator=generator) * recipe.decoder_latent_noise * spread
        decoded = decoder((latents[index] + noise).to(dev))
        target = images[index].to(dev)
        reconstruction = F.l1_loss(decoded, target)
        edge = F.l1_loss(edges(decoded), edges(target))
        optimizer.zero_grad(set_to_none=True)
        (reconstruction + recipe.edge_weight * edge).backward()
        optimizer.step()
        schedule.step()
        return {"l1": reconstruction.item(), "edge": edge.item()}

    loop.run(loop.Stage(workdir / "decoder"), total, train_step, {"model": decoder, "optimizer": optimizer,
             "schedule": schedule}, SEED, progress=progress)  # fmt: skip
    vae.eval().cpu().save_pretrained(workdir / "decoder" / "model")
    return vae


def stage_psnr(workdir: Path, stage: str) -> float:
    """PSNR of the dataset decoded from its stored latents by the `autoencoder` or `decoder` stage."""
    images = EmojiDataset.load(workdir).tensor()
    return reconstruction_psnr(load(workdir, stage), images, torch.load(workdir / "latents.pt"))


def reconstruction_psnr(vae: AutoencoderTiny, images: torch.Tensor, latents: torch.Tensor) -> float:
    with torch.no_grad():
        decoded = torch.cat([vae.decoder(batch) for batch in latents.split(256)]).clamp(-1, 1)
    mse = (decoded - images).pow(2).mean().item() / 4  # images span 2, PSNR is on [0, 1]
    return -10 * torch.log10(torch.tensor(mse)).item()
