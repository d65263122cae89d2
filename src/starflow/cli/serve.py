"""`starflow serve`: a local web page to try a model (text-to-image or -video, image-to-video, likelihood)."""
from __future__ import annotations

import sys
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    p = sub.add_parser("serve", help="a local web page to try a model (Gradio)",
                       description="Serve a web page with a tab for each thing the model can do: text-to-image or "
                                   "text-to-video and image-to-video, and the exact likelihood of an uploaded "
                                   "picture. Requests run one at a time. Binds to 127.0.0.1 unless --host says "
                                   "otherwise.")
    p.add_argument("--model", type=Path, help="pipeline directory (pipeline.json) or a `starflow train` folder")
    p.add_argument("--official-config", type=Path,
                   help="official YAML config, or one of configs/*.yaml (with --checkpoint)")
    p.add_argument("--checkpoint", type=Path, help="official .pth checkpoint (with --official-config)")
    p.add_argument("--text-encoder", default=None, help="text encoder spec overriding the stored / official one")
    p.add_argument("--autoencoder", default=None, help="autoencoder spec overriding the stored / official one")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--host", default=None,
                   help="address to bind (default 127.0.0.1; 0.0.0.0 opens the page to the network, unauthenticated)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--outputs", type=Path, default=None,
                   help="folder for the files the page writes (default: a new temporary folder)")
    p.add_argument("--max-samples", type=int, default=16, help="most images per request (default 16)")
    p.set_defaults(func=run)


def _name(model: Path) -> str:
    """The page's title: the folder, with the run it belongs to when the folder is a run's `final`."""
    parts = model.resolve().parts
    return "/".join(parts[-3:]) if model.name in ("final", "best") and len(parts) >= 3 else model.name


def _dequantized(model: Path | None) -> bool:
    """Was the model trained on dequantised pixels (a run's training.json says)? Likelihoods then take bin
    centres; a pipeline folder does not carry its training data's settings."""
    from ..training.checkpoint import read_train_config

    tc = read_train_config(model) if model is not None and model.is_dir() else None
    return bool(tc is not None and tc.data.dequantize)


def run(args) -> int:
    from ..serve.app import DEFAULT_HOST, DEFAULT_PORT, build_app, launch
    from ..serve.session import ModelSession
    from .generate import load_any_pipeline

    host = args.host or DEFAULT_HOST
    port = DEFAULT_PORT if args.port is None else args.port
    if not 0 < port < 65536:
        raise ValueError(f"--port {port}: a port is 1 to 65535")
    if args.max_samples < 1:
        raise ValueError("--max-samples must be >= 1")
    pipe = load_any_pipeline(args, None)
    name = _name(args.model) if args.model is not None else args.official_config.stem
    session = ModelSession(pipe, args.outputs, name=name, max_samples=args.max_samples,
                           dequantized=_dequantized(args.model))
    app = build_app(session)
    if host not in LOOPBACK:
        print(f"warning: --host {host} serves the page to other machines, without any login", file=sys.stderr)
    print(f"{pipe.kind} model {args.model or args.official_config} on {pipe.device}; files go to {session.out_dir}",
          flush=True)
    try:
        launch(app, host, port, block=False, quiet=True)
    except OSError as e:         # gradio's message for a port in use names a range; say what to do
        raise ValueError(f"cannot serve on {host}:{port} ({e}); is another server using it? pass --port N") from e
    print(f"open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port} in a browser "
          "(Ctrl+C stops the server)", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return 0
