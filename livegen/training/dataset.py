"""The emoji dataset: Noto Color Emoji rendered with Pillow, captioned from the `emoji` package.

Built by code into a work folder, never committed: `images.npy` (N x S x S x 3, uint8) and
`emoji.json` (per image: the emoji, its name and its caption phrases).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size the bitmap font has
FONT_EMOJI_VERSION = 15  # Debian bookworm's fonts-noto-color-emoji 2.042 covers Emoji 15.0
BACKGROUND = (255, 255, 255)
MARGIN = 0.06  # share of the side left empty around the glyph
SKIN_TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
HAIR = re.compile(r"\b(man|woman|person) (red|curly|white|blond) hair\b")
BALD = re.compile(r"\b(man|woman|person) bald\b")
TEMPLATES = ("{name}", "{name} emoji", "an emoji of {article} {name}", "{article} {name} icon")


class DatasetError(RuntimeError):
    pass


@dataclass(frozen=True)
class EmojiRecord:
    char: str
    name: str
    captions: tuple[str, ...]


def _load_font() -> ImageFont.FreeTypeFont:
    if not FONT.is_file():
        raise DatasetError(
            f"{FONT} is missing: install Debian's fonts-noto-color-emoji (apt-get install fonts-noto-color-emoji)"
        )
    return ImageFont.truetype(str(FONT), FONT_SIZE)


def render(char: str, size: int, font: ImageFont.FreeTypeFont | None = None) -> Image.Image | None:
    """The emoji centred on a plain background, or None when the font has no single glyph for it."""
    font = font or _load_font()
    canvas = Image.new("RGBA", (FONT_SIZE * 4, FONT_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((FONT_SIZE // 2, FONT_SIZE // 4), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    width, height = box[2] - box[0], box[3] - box[1]
    if width > 1.6 * FONT_SIZE:  # a sequence the font has no glyph for, drawn as several
        return None
    glyph = canvas.crop(box)
    inner = round(size * (1 - 2 * MARGIN))
    scale = inner / max(width, height)
    glyph = glyph.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)
    image = Image.new("RGB", (size, size), BACKGROUND)
    image.paste(glyph, ((size - glyph.width) // 2, (size - glyph.height) // 2), glyph)
    return image


def _words(tag: str) -> str:
    return re.sub(r"\s+", " ", tag.strip(":").replace("_", " ")).strip()


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def _is_flag(char: str) -> bool:
    return any(0x1F1E6 <= ord(c) <= 0x1F1FF or 0xE0061 <= ord(c) <= 0xE007A for c in char)


def describe(char: str, data: dict) -> EmojiRecord:
    """A readable name and caption phrases; skin tone and flags become words a prompt can use."""
    name = _words(data["en"])
    subject = name
    extra: list[str] = []
    if _is_flag(char) and not name.lower().startswith("flag"):
        subject = name
        name = f"flag of {subject}"
        extra += [f"{subject} flag", f"the flag of {subject}"]
    tones = [t for t in SKIN_TONES if re.search(rf"(^|[ ,]){t} skin tone", name)]
    if len(tones) == 1:
        tone = tones[0]
        base = name.replace(f"{tone} skin tone", "").strip(" ,")
        base = re.sub(r"\s+", " ", base)
        extra += [f"{base} with {tone} skin tone", f"{base}, {tone} skin"]
        name = f"{base}, {tone} skin tone"
    name = BALD.sub(r"bald \1", HAIR.sub(r"\1 with \2 hair", name))
    extra = [BALD.sub(r"bald \1", HAIR.sub(r"\1 with \2 hair", caption)) for caption in extra]
    captions = [t.format(name=name, article=_article(name)) for t in TEMPLATES]
    for alias in data.get("alias", []):
        words = _words(alias)
        if re.fullmatch(r"[A-Za-z][A-Za-z ]{2,}", words) and not words.lower().startswith("flag for"):
            extra.append(words)
    seen: dict[str, None] = {}
    for caption in captions + extra:
        seen.setdefault(caption, None)
    return EmojiRecord(char, name, tuple(seen))


def emoji_table() -> list[tuple[str, dict]]:
    import emoji

    fully_qualified = emoji.STATUS["fully_qualified"]
    return [
        (char, data)
        for char, data in emoji.EMOJI_DATA.items()
        if data["status"] == fully_qualified and data["E"] <= FONT_EMOJI_VERSION
    ]


def build(workdir: Path, size: int = 64, progress: bool = True) -> int:
    """Render and caption every emoji the font draws; returns how many."""
    from tqdm import tqdm

    font = _load_font()
    images, records = [], []
    for char, data in tqdm(emoji_table(), desc="render emoji", disable=not progress):
        image = render(char, size, font)
        if image is None:
            continue
        images.append(np.asarray(image))
        records.append(describe(char, data))
    EmojiDataset(np.stack(images), records).save(workdir)
    return len(records)


@dataclass
class EmojiDataset:
    images: np.ndarray  # N x S x S x 3 uint8
    records: list[EmojiRecord]

    @classmethod
    def load(cls, workdir: Path) -> EmojiDataset:
        if not (workdir / "images.npy").is_file():
            raise DatasetError(f"no dataset in {workdir}: run `livegen train data --workdir {workdir}` first")
        records = [
            EmojiRecord(r["char"], r["name"], tuple(r["captions"]))
            for r in json.loads((workdir / "emoji.json").read_text())
        ]
        return cls(np.load(workdir / "images.npy"), records)

    def save(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        np.save(workdir / "images.npy", self.images)
        records = [{"char": r.char, "name": r.name, "captions": list(r.captions)} for r in self.records]
        (workdir / "emoji.json").write_text(json.dumps(records, ensure_ascii=False, indent=0))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def size(self) -> int:
        return self.images.shape[1]

    def tensor(self):
        """Images as float tensors in [-1, 1], N x 3 x S x S."""
        import torch

        return torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div(127.5).sub(1)

    def same_picture(self) -> list[tuple[int, ...]]:
        """For each image, every image with identical pixels (some flags and sequences share a glyph)."""
        groups: dict[bytes, list[int]] = {}
        for i, image in enumerate(self.images):
            groups.setdefault(image.tobytes(), []).append(i)
        return [tuple(groups[image.tobytes()]) for image in self.images]

    def index_of(self, char: str) -> int:
        for i, record in enumerate(self.records):
            if record.char == char:
                return i
        raise KeyError(char)
