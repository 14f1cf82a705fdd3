"""The emoji dataset: Noto Color Emoji rendered with Pillow, captioned from the `emoji` package
and enriched from Unicode CLDR's English emoji annotations.

Built by code into a work folder, never committed: `images.npy` (N x S x S x 3, uint8) and
`emoji.json` (per image: the emoji, its name, its caption phrases and the extra phrases).
`captions` are the names and aliases (the evaluation's caption split draws from them);
`extra` adds what people type for the same picture: CLDR's short name and keywords ("bee" for
the honeybee, "house" and "home"), plurals, adjectives, framings and a misspelling.
"""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ElementTree
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
# Debian's unicode-cldr-core: the CLDR short names and keywords of every emoji (derived: skin tones)
CLDR_ANNOTATIONS = tuple(Path("/usr/share/unicode/cldr/common") / f / "en.xml" for f in ("annotations", "annotationsDerived"))
FRAMINGS = ("{a_name}", "a picture of {a_name}", "{name} drawing", "draw {a_name}", "cartoon {name}")
ADJECTIVES = ("cute", "little", "big", "small", "happy", "simple", "colorful", "tiny", "shiny", "cool")
COUNTS = ("two", "three", "some", "many")


class DatasetError(RuntimeError):
    pass


@dataclass(frozen=True)
class EmojiRecord:
    char: str
    name: str
    captions: tuple[str, ...]
    extra: tuple[str, ...] = ()

    @property
    def training_captions(self) -> tuple[str, ...]:
        return self.captions + self.extra


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


def cldr_annotations() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Emoji (without variation selectors) -> (CLDR short name, keywords), English."""
    missing = [f for f in CLDR_ANNOTATIONS if not f.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]} is missing: install Debian's unicode-cldr-core (apt-get install unicode-cldr-core)")
    names: dict[str, str] = {}
    keywords: dict[str, tuple[str, ...]] = {}
    for path in CLDR_ANNOTATIONS:
        for node in ElementTree.parse(path).getroot().iter("annotation"):
            char, text = node.get("cp", "").replace("\ufe0f", ""), (node.text or "").strip()
            if node.get("type") == "tts":
                names[char] = text
            else:
                keywords[char] = tuple(k.strip() for k in text.split("|") if k.strip())
    return {char: (name, keywords.get(char, ())) for char, name in names.items()}


def _misspell(word: str, rng: random.Random) -> str:
    """One typing slip: a letter dropped, doubled or swapped with the next."""
    i = rng.randrange(1, len(word) - 1)
    slip = rng.choice(("drop", "double", "swap"))
    if slip == "drop":
        return word[:i] + word[i + 1 :]
    if slip == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def enrich(record: EmojiRecord, annotation: tuple[str, tuple[str, ...]] | None) -> EmojiRecord:
    """Extra phrases for the same picture: CLDR's short name and keywords, each said with an article,
    then word-level variations of the names (plural, adjective, framing, a misspelling)."""
    import inflect

    words = inflect.engine()
    rng = random.Random(record.char)  # the same phrases on every build
    short, keywords = annotation or (record.name, ())
    if ":" in short:  # "flag: Japan", "thumbs up: dark skin tone": the record's name says it better
        short = record.name
    names = list(dict.fromkeys([record.name, short]))
    extra = []
    for keyword in keywords:
        if "skin tone" not in keyword:  # a tone alone names no picture
            extra.append(keyword)
            if keyword.isalpha() and rng.random() < 0.5:  # most keywords are nouns: "a bee", "a home"
                extra.append(words.a(keyword))
    for name in names:
        extra.append(rng.choice(FRAMINGS).format(name=name, a_name=words.a(name)))
        if re.fullmatch(r"[a-z]+( [a-z]+)?", name) and not name.endswith("ing"):
            extra.append(f"{rng.choice(COUNTS)} {words.plural_noun(name)}")
            extra.append(words.a(f"{rng.choice(ADJECTIVES)} {name}"))
    long_words = [w for w in short.split() if len(w) >= 4 and w.isalpha()]
    if long_words:
        word = rng.choice(long_words)
        extra.append(words.a(short.replace(word, _misspell(word, rng), 1)))
    seen = set(record.captions)
    return EmojiRecord(record.char, record.name, record.captions,
                       tuple(e for e in dict.fromkeys(extra) if e not in seen))


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
    annotations = cldr_annotations()
    images, records = [], []
    for char, data in tqdm(emoji_table(), desc="render emoji", disable=not progress):
        image = render(char, size, font)
        if image is None:
            continue
        images.append(np.asarray(image))
        records.append(enrich(describe(char, data), annotations.get(char.replace("\ufe0f", ""))))
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
            EmojiRecord(r["char"], r["name"], tuple(r["captions"]), tuple(r.get("extra", ())))
            for r in json.loads((workdir / "emoji.json").read_text())
        ]
        return cls(np.load(workdir / "images.npy"), records)

    def save(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        np.save(workdir / "images.npy", self.images)
        records = [{"char": r.char, "name": r.name, "captions": list(r.captions), "extra": list(r.extra)}
                   for r in self.records]
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
