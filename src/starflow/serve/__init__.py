"""`starflow serve`: a local web page (Gradio) to try a pipeline: generate, continue a first frame, score likelihood."""
from .session import InputError, ModelSession, Result

__all__ = ["InputError", "ModelSession", "Result", "build_app", "launch"]


def __getattr__(name):   # the app pulls in gradio: imported when asked for
    if name in ("build_app", "launch"):
        from . import app
        return getattr(app, name)
    raise AttributeError(name)
