"""What `starflow evaluate` runs for each figure, from parsed arguments to a result entry of the report."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["run_bpd", "run_prompt_accuracy", "run_sample_figures"]


def _data_info(data, split: str, dataset) -> dict[str, Any]:
    return {**dataclasses.asdict(data), "split": split, "items": len(dataset)}


def run_bpd(pipe, info: dict, args, overrides: dict, work: Path, ctx) -> tuple[dict, dict]:
    from .bpd import evaluate_bpd
    from .sources import bpd_inputs, eval_data_config

    data = eval_data_config(pipe, overrides)
    dataset, inputs = bpd_inputs(pipe, data, args.split)
    data_info = _data_info(data, args.split, dataset)
    settings = {"model": info, "data": data_info}
    r = evaluate_bpd(pipe.flow, dataset, inputs, ctx, draws=args.draws, batch_size=args.batch_size,
                     max_items=args.max_items, partial=Path(work) / "bpd_partial.json", settings=settings,
                     progress=not args.no_progress)
    out = r.to_dict()
    out["processes"] = ctx.world
    return out, data_info


def run_prompt_accuracy(pipe, args, call: dict) -> dict:
    from .accuracy import evaluate_prompt_accuracy

    return evaluate_prompt_accuracy(pipe, args.samples_per_prompt, args.seed, args.batch_size, call)


def _prompts_file(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not path.exists():
        raise FileNotFoundError(f"prompts file not found: {path}")
    prompts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def run_sample_figures(pipe, info: dict, args, figures: list[str], overrides: dict, work: Path,
                       call: dict) -> tuple[dict[str, dict], dict | None]:
    """Generate (or reuse) the samples once, then compute FID / KID / CLIP score on them."""
    from .fid import dataset_source, extract_features, fid_from_features, folder_source, kid_from_features
    from .samples import generate_samples, sample_prompts
    from .sources import condition_of, eval_data_config

    if pipe.kind != "image":
        raise ValueError("FID, KID and CLIP score are computed on pictures here: give an image model")
    progress = not args.no_progress
    # load the networks first: a missing weights file should stop the run before hours of sampling
    extractor = clip = None
    if "fid" in figures or "kid" in figures:
        from .inception import load_inception
        extractor = load_inception(args.inception, pipe.device)
    if "clip-score" in figures:
        from .clip_score import load_clip
        if condition_of(pipe) != "text":
            raise ValueError("CLIP score compares pictures with text prompts: give a text-to-image model")
        if args.clip is None:
            raise ValueError("clip-score needs a local CLIP: --clip FOLDER")
        clip = load_clip(args.clip, pipe.device)
    dataset, data, data_info = None, None, None
    need_data = (extractor is not None and args.ref is None) or \
        (condition_of(pipe) == "text" and args.prompts_file is None)
    if need_data:
        from ..training.inputs import build_datasets
        data = eval_data_config(pipe, overrides)
        train, held, _ = build_datasets(data, 1)
        dataset = train if args.split == "train" or held is None else held
        data_info = _data_info(data, args.split, dataset)
    given = _prompts_file(args.prompts_file)
    if given is None and condition_of(pipe) == "text":
        given = list(dataset.captions)                      # the reference set's own captions, in turn
    prompts = sample_prompts(pipe, args.num_samples, given)
    samples_dir = args.samples_dir or Path(work) / "samples"
    files, gen_settings = generate_samples(pipe, samples_dir, args.num_samples, prompts, seed=args.seed,
                                           batch_size=args.batch_size, call=call, model_info=info, progress=progress)
    generated = folder_source(samples_dir, limit=args.num_samples)
    if generated.count != args.num_samples:
        raise ValueError(f"{samples_dir} holds {generated.count} pictures, expected {args.num_samples}")
    sampling = {**gen_settings, "samples_dir": str(samples_dir)}
    results: dict[str, dict] = {}
    if extractor is not None:
        if args.ref is not None:
            ref = folder_source(args.ref, size=tuple(generated.info["size"]), limit=args.ref_limit)
        else:
            ref = dataset_source(dataset, f"{data.dataset} {args.split}", limit=args.ref_limit)
        cache = Path(work) / "features"
        real = extract_features(extractor, ref, cache, batch_size=args.batch_size, progress=progress)
        fake = extract_features(extractor, generated, cache, batch_size=args.batch_size, progress=progress)
        common = {"inception": extractor.source, "feature_dim": int(real.size(1)), "num_generated": len(fake),
                  "num_reference": len(real), "reference": {"name": ref.name, **ref.info}, "sampling": sampling,
                  "implementation": "torchmetrics (float64 statistics) on features of the uint8 PNG samples"}
        if "fid" in figures:
            results["fid"] = {"fid": fid_from_features(real, fake), **common}
        if "kid" in figures:
            mean, std, size = kid_from_features(real, fake, args.kid_subsets, args.kid_subset_size, args.seed)
            results["kid"] = {"kid_mean": mean, "kid_std": std, "subsets": args.kid_subsets, "subset_size": size,
                              "subset_seed": args.seed, "degree": 3, **common}
    if clip is not None:
        from .clip_score import clip_score
        score = clip_score(clip, generated, prompts, batch_size=args.batch_size, progress=progress)
        results["clip-score"] = {"clip_score": score, "clip": str(args.clip), "num_samples": generated.count,
                                 "formula": "mean over samples of 100 cos(image, prompt) (torchmetrics CLIPScore)",
                                 "sampling": sampling}
    return results, data_info
