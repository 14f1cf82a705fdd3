"""The evaluation's feature space: a small CNN trained to tell the emoji apart.

It never ships and never sees generated images. It learns from the real renders and from their
autoencoder round trips (so the blur every sample shares is not mistaken for a different emoji),
with small shifts, rescales and noise. Its penultimate layer is the feature space where
`evaluate` retrieves nearest neighbours (by cosine similarity) and measures KID.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from torch import nn

from livegen.models.devices import pick_device
from livegen.training import autoencoder, loop
from livegen.training.dataset import EmojiDataset
from livegen.training.recipe import CLASSIFIER, SEED, ClassifierRecipe


class EmojiClassifier(nn.Module):
    def __init__(self, classes: int, feature_dim: int = CLASSIFIER.feature_dim):
        super().__init__()
        widths = (32, 64, 128, feature_dim)
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for cin, cout in zip(widths, widths[1:] + (feature_dim,)):
            layers += [
                nn.BatchNorm2d(cin),
                nn.SiLU(),
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, stride=2, padding=1),
            ]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(feature_dim, classes)
        self.config = {"classes": classes, "feature_dim": feature_dim}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Images in [-1, 1] -> penultimate-layer features."""
        device = next(self.parameters()).device
        return torch.cat([self.body(chunk.to(device)).cpu() for chunk in images.split(batch)])


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift (up to 1/16 of the side), rescale (0.9-1.1) and a little pixel noise."""
    n = len(images)
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) / 8
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False).to(images)
    moved = F.grid_sample(images - 1, grid, align_corners=False) + 1  # pads with 0, i.e. white
    noise = torch.randn(images.shape, generator=generator).to(images) * 0.03
    return (moved + noise).clamp(-1, 1)


def round_trips(workdir: Path, vae_folder: Path | None = None) -> torch.Tensor:
    """Every dataset image decoded back from its latent: what a perfect sampler would produce.

    Through the work folder's own autoencoder where `make model` left one; otherwise (evaluating
    the shipped model without a rebuild) through the autoencoder in `vae_folder`, the model's own.
    """
    with torch.no_grad():
        if (workdir / "decoder" / "model").is_dir() and (workdir / "latents.pt").is_file():
            vae = autoencoder.load(workdir, "decoder")
            latents = torch.load(workdir / "latents.pt")
        else:
            if vae_folder is None:
                raise FileNotFoundError(f"{workdir} has no autoencoder (decoder stage) and no model's VAE was given")
            vae = AutoencoderTiny.from_pretrained(vae_folder, torch_dtype=torch.float32).eval()
            latents = autoencoder.encode_all(vae, EmojiDataset.load(workdir).tensor(), torch.device("cpu"))
        return torch.cat([vae.decoder(chunk).clamp(-1, 1) for chunk in latents.split(256)])


def train(
    workdir: Path,
    recipe: ClassifierRecipe = CLASSIFIER,
    steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
    vae_folder: Path | None = None,
) -> EmojiClassifier:
    dev = pick_device(device)
    real = EmojiDataset.load(workdir).tensor()
    decoded = round_trips(workdir, vae_folder)
    torch.manual_seed(SEED)
    model = EmojiClassifier(len(real), recipe.feature_dim).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    total = steps or recipe.steps
    schedule = loop.warmup_cosine(optimizer, 100, total)

    def train_step(step: int, generator: torch.Generator) -> dict[str, float]:
        labels = torch.randint(len(real), (recipe.batch_size,), generator=generator)
        use_decoded = torch.rand(len(labels), generator=generator) < 0.5
        images = torch.where(use_decoded[:, None, None, None], decoded[labels], real[labels])
        logits = model(augment(images, generator).to(dev))
        loss = F.cross_entropy(logits, labels.to(dev), label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(1).cpu() == labels).float().mean().item()}

    objects = {"model": model, "optimizer": optimizer, "schedule": schedule}
    loop.run(loop.Stage(workdir / "classifier"), total, train_step, objects, SEED, progress=progress)
    model.eval().cpu()
    torch.save({"config": model.config, "state": model.state_dict()}, workdir / "classifier" / "model.pt")
    return model


def load(workdir: Path) -> EmojiClassifier:
    saved = torch.load(workdir / "classifier" / "model.pt")
    model = EmojiClassifier(**saved["config"])
    model.load_state_dict(saved["state"])
    return model.eval()
