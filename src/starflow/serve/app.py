"""The page: a Gradio app over one pipeline, with a tab for each thing the model can do."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .session import ModelSession

__all__ = ["build_app", "launch", "DEFAULT_HOST", "DEFAULT_PORT"]

DEFAULT_HOST = "127.0.0.1"    # loopback: another host only when asked
DEFAULT_PORT = 7860

# no telemetry nor version check from an offline tool (read when gradio is imported)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _header(s: ModelSession) -> str:
    p = s.pipe
    H, W = s.default_size()
    what = "text-to-image" if p.kind == "image" else "text-to-video and image-to-video"
    if not s.conditioned:
        what = "unconditional " + ("image" if p.kind == "image" else "video") + " model"
    cond = "unconditional" if not s.conditioned else (
        f"class labels 0-{s.labels - 1}" if s.labels is not None else f"text ({p.text_encoder_spec})")
    space = "pixels" if p.autoencoder is None else f"latents of `{p.autoencoder_spec}`"
    n = sum(t.numel() for t in p.flow.parameters())
    frames = f", {p.defaults.num_frames} frames" if p.kind == "video" and p.defaults.num_frames else ""
    return (f"## STARFlow: {s.name}\n{what} · {W}x{H} px{frames} · conditioning: {cond} · flow on {space} · "
            f"{n / 1e6:.2f}M flow parameters · {p.device}. Requests run one at a time, in order.")


def build_app(pipe_or_session, *, name: str | None = None, out_dir: str | Path | None = None,
              tabs: Sequence | None = None):
    """A gr.Blocks over a pipeline (or a ModelSession); `tabs` defaults to every tab the model can use."""
    import gradio as gr

    from .tabs import TABS

    s = pipe_or_session if isinstance(pipe_or_session, ModelSession) else \
        ModelSession(pipe_or_session, out_dir, name=name or "model")
    with gr.Blocks(title=f"STARFlow: {s.name}", analytics_enabled=False) as app:
        gr.Markdown(_header(s))
        for tab in (TABS if tabs is None else tabs):
            if tab.available(s):
                tab.build(s)
    # one request at a time (also one concurrency group in the tabs); a bounded waiting line
    app.queue(default_concurrency_limit=1, max_size=64)
    app.session = s
    return app


def launch(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, block: bool = True, quiet: bool = False):
    """Serve the app on host:port (no share link, nothing reached outside). block=False returns at once."""
    s: ModelSession = app.session
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
               allowed_paths=[str(s.out_dir)], quiet=quiet, show_error=False, footer_links=["api"])
    return app
