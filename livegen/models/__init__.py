"""Image and speech models behind the interfaces the engine calls (base.py, voice.py)."""

import threading

# diffusers' and transformers' lazy modules are not safe to import from two threads at once: with
# the image and speech models loading side by side, one thread can meet the other's half-made
# module. Whoever loads a model through them holds this.
LIBRARY_LOADS = threading.Lock()


def import_image_libraries_early() -> None:
    """Import the image models' libraries (diffusers, transformers: seconds) on a thread of their own
    while the server is still starting; the engine's first load then finds them imported."""

    def load() -> None:
        with LIBRARY_LOADS:
            import livegen.models.loader  # noqa: F401

    threading.Thread(target=load, name="import-image-libraries", daemon=True).start()
