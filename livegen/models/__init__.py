"""Image and speech models behind the interfaces the engine calls (base.py, voice.py)."""

import threading

# diffusers' and transformers' lazy modules are not safe to import from two threads at once: with
# the image and speech models loading side by side, one thread can meet the other's half-made
# module. Whoever loads a model through them holds this.
LIBRARY_LOADS = threading.Lock()
