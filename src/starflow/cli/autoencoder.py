"""`starflow train-autoencoder` and `starflow finetune-decoder`."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train the small KL autoencoder on the bundled digits or on "
                                                 "moving-digit frames (offline)")
    p.add_argument("--out", type=Path, default=Path("runs/small-kl-ae"), help="output folder (default: %(default)s)")
    p.add_argument("--data", choices=["digits", "moving_digits"], default="digits",
                   help="the 8x8 digits, or the frames of the moving-digits training videos (default: %(default)s)")
    p.add_argument("--canvas", type=int, default=16, help="moving_digits: frame side (default: %(default)s)")
    p.add_argument("--num-frames", type=int, default=8, help="moving_digits: frames per video (default: %(default)s)")
    p.add_argument("--speed", type=int, default=4,
                   help="moving_digits: pixels per frame (default: %(default)s)")
    p.add_argument("--start", choices=["any", "wall"], default="any",
                   help="moving_digits: where videos start (default: %(default)s)")
    p.add_argument("--motion", choices=["bounce", "wrap"], default="bounce",
                   help="moving_digits: at an edge the digit bounces, or wraps round (default: %(default)s)")
    p.add_argument("--align", action="store_true",
                   help="moving_digits: the fixed coordinate on multiples of --speed as well")
    p.add_argument("--num-videos", type=int, default=2000,
                   help="moving_digits: training videos (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--hidden-channels", type=str, default="32,64",
                   help="comma-separated widths; each step after the first halves the resolution (default: %(default)s)")
    p.add_argument("--kl-weight", type=float, default=1e-3)
    p.add_argument("--layout", choices=["conv", "patch"], default="conv",
                   help="conv: stride-2 steps; patch: one token per --patch pixels, exactly shift-equivariant "
                        "(default: %(default)s)")
    p.add_argument("--patch", type=int, default=4, help="layout patch: pixels per latent token (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)

    q = sub.add_parser("finetune-decoder",
                       help="fine-tune an autoencoder's decoder on noisy latents (official finetune_decoder)")
    q.add_argument("--autoencoder", required=True,
                   help="spec: kl:<dir> | sd-vae:<dir or hub id> | wan:<dir or hub id>[:temporal_scale]")
    q.add_argument("--out", type=Path, required=True, help="folder for the fine-tuned autoencoder")
    q.add_argument("--data", default="digits", help="'digits' (bundled) or a folder of images (default: %(default)s)")
    q.add_argument("--img-size", type=int, default=None, help="resize images to this side (default: keep)")
    q.add_argument("--noise-std", type=float, default=0.3)
    q.add_argument("--steps", type=int, default=1000)
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--lr", type=float, default=1e-4)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--perceptual-weights", type=Path, default=None,
                   help="folder with VGG16 + LPIPS weights (default: $STARFLOW_PERCEPTUAL_DIR or "
                        "~/.cache/starflow/lpips if present; otherwise L2 only)")
    q.add_argument("--perceptual-weight", type=float, default=1.0)
    q.add_argument("--device", default="cpu")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run_finetune)


def run_train(args) -> int:
    from ..autoencoders import train_small_autoencoder
    from ..autoencoders.train_small import moving_digit_frames

    try:
        hidden = [int(c) for c in args.hidden_channels.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--hidden-channels must be comma-separated ints, got {args.hidden_channels!r}") from None
    from .checks import check_device
    check_device(args.device)
    images = (moving_digit_frames(args.canvas, args.num_frames, args.num_videos, args.speed, args.start,
                                  args.align, args.motion)
              if args.data == "moving_digits" else None)
    out = train_small_autoencoder(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                                  latent_channels=args.latent_channels, hidden_channels=hidden,
                                  kl_weight=args.kl_weight, device=args.device, progress=not args.no_progress,
                                  images=images, layout=args.layout, patch=args.patch)
    log = json.loads((out / "train_log.json").read_text())
    print(f"saved small KL autoencoder to {out} (reconstruction MSE {log['recon_mse']:.5f}); "
          f"use it as --autoencoder kl:{out}")
    sys.stdout.flush()
    return 0


def _load_images(data: str, img_size: int | None, channels: int | None):
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ..autoencoders import digits_images

    if data == "digits":
        x = digits_images()  # (N, 1, 8, 8)
    else:
        from PIL import Image

        folder = Path(data)
        if not folder.is_dir():
            raise FileNotFoundError(f"--data: {folder} is neither 'digits' nor a folder of images")
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
        if not files:
            raise FileNotFoundError(f"--data: no .png/.jpg/.jpeg/.webp/.bmp images in {folder}")
        if img_size is None:
            raise ValueError("--img-size is required with a folder of images (they are resized to one size)")
        mode = "L" if channels == 1 else "RGB"
        arrs = [np.asarray(Image.open(f).convert(mode).resize((img_size, img_size), Image.BICUBIC)) for f in files]
        x = torch.from_numpy(np.stack(arrs)).float()
        x = (x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)) / 127.5 - 1.0
    if img_size is not None and x.shape[-1] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False).clamp(-1, 1)
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1).contiguous()  # grey -> RGB for 3-channel autoencoders
        else:
            raise ValueError(f"the data has {x.shape[1]} channels but the autoencoder expects {channels}")
    return x


def run_finetune(args) -> int:
    from ..autoencoders import LPIPS, FinetuneConfig, finetune_decoder, find_perceptual_weights, load_autoencoder
    from ..autoencoders.train_small import reconstruction_mse

    from .checks import check_device
    ae = load_autoencoder(args.autoencoder, device=check_device(args.device))
    images = _load_images(args.data, args.img_size, ae.in_channels)
    f = ae.spatial_factor
    if images.shape[-1] % f or images.shape[-2] % f:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the autoencoder's spatial "
                         f"factor {f}; pass --img-size")
    cfg = FinetuneConfig(noise_std=args.noise_std, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         perceptual_weight=args.perceptual_weight, seed=args.seed)
    folder = find_perceptual_weights(args.perceptual_weights)
    perceptual = LPIPS.from_dir(folder) if folder is not None and args.perceptual_weight > 0 else None
    print(f"finetune-decoder: {len(images)} images {tuple(images.shape[1:])}, noise_std={cfg.noise_std}, loss: L2"
          + (f" + {cfg.perceptual_weight} * LPIPS ({folder})" if perceptual is not None else
             " only (no perceptual weights found; see --perceptual-weights)"))
    hist = finetune_decoder(ae, images, cfg, perceptual=perceptual, progress=not args.no_progress)
    out = ae.save_pretrained(args.out)
    n = min(50, len(hist["l2"]))
    summary = {**cfg.to_dict(), "autoencoder": args.autoencoder, "data": args.data,
               "final_l2": sum(hist["l2"][-n:]) / n, "perceptual": perceptual is not None,
               "recon_mse_clean": reconstruction_mse(ae, images[:512])}
    (Path(out) / "finetune_log.json").write_text(json.dumps(summary, indent=2) + "\n")
    prefix = args.autoencoder.split(":", 1)[0]
    spec = f"{prefix}:{out}" + (f":{ae.temporal_scale:g}" if prefix == "wan" else "")
    print(f"saved fine-tuned autoencoder to {out} (final L2 {summary['final_l2']:.5f}); use it as "
          f"--autoencoder {spec}")
    sys.stdout.flush()
    return 0
