"""When and with whom models compute: warm runners, latest-wins sessions, micro-batches."""

from livegen.engine.engine import Engine, EngineBusy
from livegen.engine.session import Session

__all__ = ["Engine", "EngineBusy", "Session"]
