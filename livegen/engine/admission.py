"""Admission: a `generate` message becomes an image task, or a typed error, before any slot is taken.

Validation is cheap and runs on the event loop; decoding the input image and the similarity
filter run on worker threads.
"""

from __future__ import annotations

import time

from livegen.config import Settings
from livegen.engine.image_runner import ImageRunner, ImageTask
from livegen.engine.images import BadImage, decode_input_image, image_similarity
from livegen.engine.session import Session
from livegen.engine.workers import Workers
from livegen.models.base import BatchSpec
from livegen.protocol import Generate, ProtocolError, Skipped


async def image_task(request: Generate, session: Session, runners: dict[str, ImageRunner], default: str | None,
                     settings: Settings, workers: Workers) -> ImageTask:
    """Check a `generate` against what the server serves and decode its image; ProtocolError if it cannot run."""
    received_at = time.perf_counter()

    def fail(code: str, message: str) -> ProtocolError:
        return ProtocolError(code, message, request.id)

    name = request.model or default
    runner = runners.get(name or "")
    if runner is None:
        raise fail("unknown_model", f"unknown model {request.model!r}; served: {sorted(runners)}")
    if not runner.ready:
        raise fail("not_ready", f"{name} is not ready ({runner.unready_reason}); retry after /readyz")
    for field, text in (("prompt", request.prompt), ("blend_prompt", request.blend_prompt or "")):
        if len(text) > settings.max_prompt_chars:
            raise fail("prompt_too_long", f"{field} has {len(text)} characters; at most {settings.max_prompt_chars}")
    description = runner.generator.description  # type: ignore[union-attr]
    width, height = request.width, request.height
    if not width and not height:
        width, height = description.sizes[0]
    if (width, height) not in description.sizes:
        served = ", ".join(f"{w}x{h}" for w, h in description.sizes)
        raise fail("size_not_served", f"{width}x{height} is not served by {name}; served sizes: {served}")
    image = None
    if request.image is not None:
        try:
            image = await workers.run(decode_input_image, request.image, width, height)
        except BadImage as exc:
            raise fail("bad_image", str(exc)) from exc
    guidance = description.default_guidance if request.guidance is None else request.guidance
    spec = BatchSpec(width, height, request.steps, guidance, request.strength if image is not None else None)
    return ImageTask(id=request.id, runner=runner, owner=session, received_at=received_at, request=request,
                     spec=spec, seed=session.seed if request.seed is None else request.seed, image=image)


async def similar_to_last_frame(task: ImageTask, session: Session, workers: Workers) -> Skipped | None:
    """The similarity filter: a camera frame that barely moved from the input of the session's
    latest frame reuses that frame (never an input that was superseded, blocked or failed)."""
    threshold = task.request.similarity_filter  # type: ignore[union-attr]
    last = session.last_framed
    if (threshold is None or task.image is None or not isinstance(last, ImageTask) or last.image is None
            or last.similarity_key != task.similarity_key):
        return None
    similarity = await workers.run(image_similarity, task.image, last.image)
    if similarity < threshold:
        return None
    return Skipped(id=task.id, frame=last.id, similarity=round(similarity, 5))
