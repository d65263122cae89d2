"""`starflow demo`: the embedded default, offline on a CPU in minutes.

Trains (or reuses from the cache) the digits text-to-image model and the moving-digits text-to-video model
from configs/digits_t2i.yaml and configs/moving_digits_t2v.yaml (the latter in the latent space of a small
KL autoencoder that the demo trains on the moving-digit frames first, as STARFlow-V runs in Wan's), then writes
- demo/digits.png: one row per prompt "a handwritten digit zero" ... "nine" (guidance + Jacobi + denoising),
- demo/inpaint.png, demo/edit.png: inpainting and editing of held-out digits,
- demo/moving_digit*.gif / .mp4 (cli.demo_video): one video per moving-digit prompt, image-to-video pairs,
  long videos through the sliding window, video-to-video pairs, every video labelled,
and prints held-out bits/dim, `prompt accuracy: X.XX` (a digits classifier on >= 20 samples per prompt)
with the classifier's own test accuracy, the inpainting / editing figures, the video figures of the frame
reader (evaluation.video_eval: the same as `starflow evaluate-video`), and where the files are.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .demo_video import video_part

DIGITS_CONFIG = "digits_t2i.yaml"
VIDEO_CONFIG = "moving_digits_t2v.yaml"
SCALE = 4                                                # 8x8 digits are tiny: enlarge the written files
# inpainting / editing of the held-out digits: 4 rounds and strength 0.6 measured as good as 8 rounds and 0.8
# (benchmarks/RESULTS.md, "Inpainting and editing"), in half the time
INPAINT_ITEMS, INPAINT_ITERATIONS, EDIT_STRENGTH = 0, 4, 0.6
# the small KL autoencoder of a latent-space moving-digits config (the commands in its comments train the same)
VIDEO_AE = dict(steps=800, batch_size=64, lr=5e-3, latent_channels=4, hidden_channels=(64, 64), layout="patch",
                patch=4)


def register(sub) -> None:
    p = sub.add_parser("demo", help="train (or reuse) the embedded digit models and write demo pictures/videos")
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default ./demo)")
    p.add_argument("--cache", type=Path, default=None,
                   help="trained models are kept here (default $STARFLOW_CACHE or ~/.cache/starflow/demo)")
    p.add_argument("--configs", type=Path, default=None, help="folder with the two training configs "
                                                              "(default ./configs, else the repository's)")
    p.add_argument("--retrain", action="store_true", help="train again even when the cache has the models")
    p.add_argument("--samples-per-prompt", type=int, default=20, help="digits sampled per prompt (>= 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="sampling device (default: cuda when available)")
    p.set_defaults(func=run)


def find_configs(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else [Path.cwd() / "configs", Path(__file__).resolve().parents[3] / "configs"]
    for c in candidates:
        if c is not None and (c / DIGITS_CONFIG).exists() and (c / VIDEO_CONFIG).exists():
            return c
    raise FileNotFoundError(f"no {DIGITS_CONFIG} and {VIDEO_CONFIG} in {', '.join(str(c) for c in candidates)}: "
                            "run the demo from the repository root or pass --configs")


def cache_root(explicit: Path | None) -> Path:
    if explicit:
        return explicit
    env = os.environ.get("STARFLOW_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "starflow" / "demo"


def _cache_dir(cache: Path, name: str, content: bytes) -> Path:
    """cache/<name>-<key>, the key hashing what the item is made from and our version: a change retrains."""
    from .. import __version__

    return cache / f"{name}-{hashlib.sha256(content + __version__.encode()).hexdigest()[:12]}"


def trained_autoencoder(config: Path, cache: Path, retrain: bool) -> Path | None:
    """The small KL autoencoder that a latent-space moving-digits config names (`data.autoencoder: kl:...`),
    trained on that config's training frames into the cache, keyed like the models; None in pixel space."""
    from ..autoencoders import train_small_autoencoder
    from ..autoencoders.train_small import moving_digit_frames
    from ..training import load_train_config

    data = load_train_config(config).data
    if data.dataset != "moving_digits" or not str(data.autoencoder or "").startswith("kl:"):
        return None
    frames = dict(canvas=data.canvas, num_frames=data.num_frames, num_videos=data.num_videos, speed=data.speed,
                  start=data.start, align=data.align, motion=data.motion)
    root = _cache_dir(cache, "moving_digits_ae", json.dumps({**VIDEO_AE, **frames}, sort_keys=True).encode())
    if (root / "train_log.json").exists() and not retrain:   # written last: a complete autoencoder
        print(f"[autoencoder] reusing the autoencoder trained earlier: {root}")
        return root
    print(f"[autoencoder] training the small KL autoencoder on the moving-digit frames into {root} ...", flush=True)
    t0 = time.time()
    train_small_autoencoder(root, images=moving_digit_frames(**frames), progress=True, **VIDEO_AE)
    print(f"[autoencoder] trained in {time.time() - t0:.0f}s")
    return root


def trained_model(name: str, config: Path, cache: Path, retrain: bool,
                  overrides: tuple[str, ...] = ()) -> tuple[Path, float | None]:
    """-> (trained model folder, held-out bits/dim). The cache key is the config's content, the overrides and
    our version, so editing a config retrains and an unchanged one is reused."""
    root = _cache_dir(cache, name, config.read_bytes() + "\n".join(overrides).encode())
    marker = root / "demo.json"
    if marker.exists() and not retrain:
        info = json.loads(marker.read_text())
        if (Path(info["model_dir"]) / "pipeline.json").exists():
            print(f"[{name}] reusing the model trained earlier: {info['model_dir']}")
            return Path(info["model_dir"]), info.get("test_bpd")
    from ..training import load_train_config, train

    # an interrupted earlier demo continues from its checkpoint; --retrain starts the run again
    again = "overwrite=true" if retrain else "resume=true"
    cfg = load_train_config(config, overrides=[f"log.out_dir={root / 'run'}", again, *overrides])
    print(f"[{name}] training from {config} into {root} ...", flush=True)
    t0 = time.time()
    result = train(cfg)
    bpd = None if result.test_bpd is None else float(result.test_bpd)
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"model_dir": str(result.checkpoint_dir), "test_bpd": bpd, "steps": result.steps,
                                  "seconds": round(time.time() - t0, 1)}, indent=2))
    print(f"[{name}] trained {result.steps} steps in {time.time() - t0:.0f}s")
    return Path(result.checkpoint_dir), bpd


def _is_labels(pipe) -> bool:
    return str(pipe.text_encoder_spec or "").startswith("labels:")


def digits_part(pipe, tc, out_dir: Path, samples_per_prompt: int, seed: int):
    from ..evaluation.classifier import DIGIT_PROMPTS, DigitsClassifier, digit_prompt_accuracy
    from ..data.media import save_image_grid

    clf = DigitsClassifier.fit()
    prompts = [str(d) for d in range(10)] if _is_labels(pipe) else DIGIT_PROMPTS
    acc, images = digit_prompt_accuracy(pipe, clf, samples_per_prompt, seed, tc.data.dequantize, prompts=prompts,
                                        batch_size=200)
    cols = min(samples_per_prompt, 10)                              # the grid shows the first 10 of each row
    grid = images.reshape(10, samples_per_prompt, *images.shape[1:])[:, :cols].flatten(0, 1)
    path = save_image_grid(grid, out_dir / "digits.png", nrow=cols, scale=SCALE)
    return acc, path


def editing_part(pipe, tc, out_dir: Path, seed: int):
    """Inpainting and editing of the held-out digits (evaluation.inpainting): figures and two pictures."""
    import torch

    from ..data.media import save_image_grid
    from ..evaluation.inpainting import evaluate_inpainting

    f = evaluate_inpainting(pipe, items=INPAINT_ITEMS, seed=seed, iterations=INPAINT_ITERATIONS,
                            edit_strength=EDIT_STRENGTH, dequantized=tc.data.dequantize, progress=False)
    shown = 10                                                       # pairs per picture: 10 rows of 2 x 3 tasks
    rows = torch.cat([f.pictures[k][:2 * shown] for k in ("lower", "box", "other")])
    inpaint = save_image_grid(_interleave(rows, shown), out_dir / "inpaint.png", nrow=6, scale=SCALE)
    edit = save_image_grid(f.pictures["edit"][:4 * shown], out_dir / "edit.png", nrow=8, scale=SCALE)
    return f, [inpaint, edit]


def _interleave(rows, shown: int):
    """Three tasks' (input, output) pairs side by side, one item per row: (3 * 2 * shown, ...) -> rows of 6."""
    import torch

    tasks = rows.reshape(3, shown, 2, *rows.shape[1:])                   # task, item, (input, output)
    return torch.cat([tasks[:, i].flatten(0, 1) for i in range(shown)])


def run(args) -> int:
    import torch

    from ..pipelines import StarFlowPipeline, StarFlowVideoPipeline
    from ..training.checkpoint import read_train_config

    if args.samples_per_prompt < 20:
        raise ValueError("--samples-per-prompt must be >= 20 (prompt accuracy needs at least 20 per digit)")
    t0 = time.time()
    configs = find_configs(args.configs)
    cache = cache_root(args.cache)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)

    img_dir, img_bpd = trained_model("digits_t2i", configs / DIGITS_CONFIG, cache, args.retrain)
    ae = trained_autoencoder(configs / VIDEO_CONFIG, cache, args.retrain)
    vid_dir, vid_bpd = trained_model("moving_digits_t2v", configs / VIDEO_CONFIG, cache, args.retrain,
                                     (f"data.autoencoder=kl:{ae}",) if ae is not None else ())

    print("sampling digits ...", flush=True)
    image_pipe = StarFlowPipeline.from_pretrained(img_dir, device=device)
    img_tc = read_train_config(img_dir)
    acc, grid_path = digits_part(image_pipe, img_tc, args.out, args.samples_per_prompt, args.seed)
    print("inpainting and editing held-out digits ...", flush=True)
    edits, edit_paths = editing_part(image_pipe, img_tc, args.out, args.seed)
    print("sampling and scoring moving digits ...", flush=True)
    video_pipe = StarFlowVideoPipeline.from_pretrained(vid_dir, device=device)
    t1 = time.time()
    report, videos = video_part(video_pipe, read_train_config(vid_dir), args.out, args.seed)
    video_seconds = time.time() - t1

    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"   # noqa: E731
    print()
    # a latent-space model's figure counts bits per latent dimension: not comparable with pixels
    print(f"held-out bits/dim: digits {fmt(img_bpd)}, moving digits {fmt(vid_bpd)}"
          + (" (per latent dimension)" if ae is not None else ""))
    print(f"prompt accuracy: {acc.accuracy:.2f}")
    print(f"  ({acc.num_samples} digits, {args.samples_per_prompt} per prompt; per digit "
          + " ".join(f"{d}:{a:.2f}" for d, a in acc.per_digit.items()) + ")")
    print(f"classifier test accuracy: {acc.classifier_test_accuracy:.3f} (SVM on the held-out digits split)")
    e = edits
    print(f"inpainting ({e.items} held-out digits, classifier reads the prompted digit): lower half "
          f"{e.lower_right:.2f}, random 4x4 box {e.box_right:.2f}, lower half under another digit's prompt "
          f"{e.lower_other:.2f} ({e.lower_other_items} digits whose upper half allows one); known pixels changed "
          f"by at most {e.known_max_change:.1e}")
    print(f"editing to another digit's prompt (strength {e.edit_strength}): {e.edit_target:.2f}; unchanged prompt "
          f"at strength 0 gives the input back to {e.edit_identity_max_err:.1e}")
    for line in report.lines():
        print(line)
    print(f"  (videos read frame by frame: the digit located, classified and tracked; sampling and scoring took "
          f"{video_seconds:.0f}s)")
    print(f"wrote {grid_path}")
    for p in edit_paths:
        print(f"wrote {p}")
    for v in videos:
        print(f"wrote {v}")
    print(f"try them in a browser: starflow serve --model {img_dir}   (the video model: --model {vid_dir})")
    print(f"trained models cached in {cache}; demo took {time.time() - t0:.0f}s")
    return 0
