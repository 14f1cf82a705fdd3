"""Where a model's files are, from local files only: a folder, the embedded model, or a repo id
already in the local Hugging Face cache. Light to import: the CLI checks sources before the
server starts, while diffusers (seconds to import) loads in the engine."""

from __future__ import annotations

from pathlib import Path

from livegen.models.base import ModelError
from livegen.models.embedded import EMBEDDED_MODEL, EMBEDDED_SOURCE

HOW_TO_GET = (
    "Give a folder written by diffusers' save_pretrained, or download the model on a machine "
    "with internet (huggingface-cli download <repo>) and copy its cache folder here."
)


def resolve_source(source: str) -> Path:
    """A local folder, the embedded model, or a repo id in the local Hugging Face cache; else a clear error."""
    if source == EMBEDDED_SOURCE:
        return EMBEDDED_MODEL
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelError(f"model folder not found: {path}. {HOW_TO_GET}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception as exc:
        raise ModelError(
            f"model {source!r} is neither a folder nor in the local Hugging Face cache. {HOW_TO_GET}"
        ) from exc
