import shutil

import pytest
import torch

from starflow.training import load_trained, train
from starflow.training.trainer import TrainModule, denoiser_target


def test_stopped_and_resumed_run_gives_the_same_losses(tiny_cfg, tmp_path, losses):
    extra = ("log.ckpt_every=3", "log.keep_last=5", "optim.ema=0.9", "optim.grad_accum=2", "optim.dropout=0.1")
    full = train(tiny_cfg(*extra, out="full"))
    assert full.steps == 6 and len(losses(full)) == 6
    # a fresh folder holding only the step-3 checkpoint: the run that was stopped there
    ck = tmp_path / "resumed" / "checkpoints"
    ck.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "ckpt-00000003", ck / "ckpt-00000003")
    resumed = train(tiny_cfg(*extra, "resume=true", out="resumed"))
    assert [m["step"] for m in resumed.metrics if "loss" in m] == [4, 5, 6]
    assert losses(resumed) == pytest.approx(losses(full)[3:], rel=1e-6, abs=1e-7)
    for k, v in full.model.state_dict().items():  # EMA weights included
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert resumed.test_bpd == pytest.approx(full.test_bpd, abs=1e-5)


def test_gradient_accumulation_and_checkpointing_match_one_batch(tiny_cfg, losses):
    one = train(tiny_cfg("optim.max_steps=3", out="a1"))
    four = train(tiny_cfg("optim.max_steps=3", "optim.grad_accum=4", out="a4"))
    assert losses(four) == pytest.approx(losses(one), rel=1e-5, abs=1e-6)
    ckpt = train(tiny_cfg("optim.max_steps=3", "optim.grad_checkpoint=true", out="gc"))
    assert losses(ckpt) == pytest.approx(losses(one), rel=1e-5, abs=1e-6)


def test_learning_happens_and_outputs_are_written(tiny_cfg, tmp_path, losses):
    r = train(tiny_cfg("optim.max_steps=12", "log.eval_every=6", "log.sample_every=12", "log.plot=true",
                       "data.caption_dropout=0.5", "optim.precision=auto"))   # auto: the CPU bf16 probe runs
    ls = losses(r)
    assert sum(ls[-3:]) < sum(ls[:3])                      # the weights really update
    evals = [m["eval_bpd"] for m in r.metrics if "eval_bpd" in m]
    assert len(evals) == 2 and evals[-1] == pytest.approx(r.test_bpd) and 0 < r.test_bpd < 6
    out = tmp_path / "run"
    assert (out / "metrics.jsonl").exists() and (out / "curves.png").exists()
    assert (out / "samples" / "step_00000012.png").exists()
    model, cfg = load_trained(r.checkpoint_dir)
    assert cfg.data.condition == "labels" and model.config.txt_dim == 11
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, r.model.state_dict()[k])


def test_steps_with_large_gradients_are_skipped_and_counted(tiny_cfg):
    r = train(tiny_cfg("optim.max_steps=3", "optim.grad_skip_threshold=1e-6", "optim.grad_skip_after=1"))
    assert r.skipped_steps == 2 and r.metrics[-2]["skipped"] == 2


def test_non_finite_loss_is_skipped(tiny_cfg, monkeypatch):
    calls = {"n": 0}
    forward = TrainModule.forward

    def poisoned(self, x, y, denoise=False):
        lz, ll, reg = forward(self, x, y, denoise)
        calls["n"] += 1
        return (lz * float("nan"), ll, reg) if calls["n"] == 2 else (lz, ll, reg)
    monkeypatch.setattr(TrainModule, "forward", poisoned)
    r = train(tiny_cfg("optim.max_steps=3", "log.eval_max_items=0", "log.eval_every=0"))
    assert r.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in r.model.parameters())


def test_denoiser_target_is_the_flow_score():
    from starflow import ModelConfig, StarFlow
    from starflow.sampling.denoise import score_denoise

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(dict(channel_size=1, img_size=4, patch_size=2, channels=32, head_dim=16, blocks=2,
                                     layers_per_block=[1], rope=False))
    model = StarFlow(cfg)
    for p in model.parameters():
        p.data += 0.05 * torch.randn_like(p)
    x = torch.randn(3, 1, 4, 4).requires_grad_(True)
    sigma = torch.tensor([0.3, 0.2, 0.5])
    out = model(x)
    lz, ll = model.loss_terms(out.z, out.logdets)
    ((lz + ll).mean() / 2).backward()                      # grad_accum = 2
    target = denoiser_target(x.grad, 2, sigma)
    for i in range(3):  # score_denoise: x - sigma^2 dNLL/dx, so (x - denoised) / sigma = sigma dNLL/dx
        den = score_denoise(model, x[i:i + 1].detach(), None, float(sigma[i]))
        torch.testing.assert_close(target[i:i + 1], (x[i:i + 1].detach() - den) / sigma[i], rtol=1e-4, atol=1e-5)


def test_learnable_denoiser_trains_with_its_own_optimiser(tiny_cfg):
    r = train(tiny_cfg("model.learnable_self_denoiser=True", "model.conditional_denoiser=True", "data.dequantize=false",
                       "data.noise_std=0.3",
                       "optim.max_steps=3", "optim.denoiser_lr=1e-3", "optim.latent_norm_reg=1e-4",
                       "data.noise_levels=[0.2, 0.4]", "data.noise_weighting=true"))
    rows = [m for m in r.metrics if "loss" in m]
    assert all("loss_denoiser" in m and m["loss_denoiser"] > 0 for m in rows)
    torch.manual_seed(0)
    from starflow import StarFlow
    init = StarFlow(r.model.config).state_dict()
    changed = {k.split(".")[0] for k, v in r.model.state_dict().items() if not torch.equal(v, init[k])}
    assert {"blocks", "learnable_self_denoiser"} <= changed


def test_denoiser_needs_noise(tiny_cfg):
    from starflow.config import ConfigError
    with pytest.raises(ConfigError, match="noise_std"):
        train(tiny_cfg("model.learnable_self_denoiser=True"))


def test_dropout_hooks_act_in_training_only():
    from starflow import ModelConfig, StarFlow
    from starflow.training.trainer import add_dropout

    cfg = ModelConfig.from_dict(dict(channel_size=1, img_size=4, patch_size=2, channels=32, head_dim=16, blocks=2,
                                     layers_per_block=[1], rope=False))
    torch.manual_seed(0)
    plain = StarFlow(cfg)
    for p in plain.parameters():
        p.data += 0.1 * torch.randn_like(p)
    dropped = StarFlow(cfg)
    dropped.load_state_dict(plain.state_dict())
    add_dropout(dropped, 0.5)
    x = torch.rand(2, 1, 4, 4)
    dropped.train()
    assert not torch.allclose(dropped(x).z, dropped(x).z)
    dropped.eval()
    torch.testing.assert_close(dropped(x).z, plain.eval()(x).z)


def test_bench_train_prints_json_last(tmp_path, capsys):
    import json

    from starflow.cli.main import main

    tiny = ["model.channels=32", "model.head_dim=16", "model.blocks=2", "model.layers_per_block=1",
            "model.patch_size=2", "optim.batch_size=16", "optim.num_threads=1", "log.progress=false",
            "log.sample_every=-1", "log.eval_draws=1"]
    assert main(["bench-train", "--seconds", "1", "--out", str(tmp_path / "b"), *tiny]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"test_bpd", "steps", "seconds"} <= set(last) and last["steps"] >= 1 and 0 < last["test_bpd"] < 8


def test_validation_split_and_keep_best(tiny_cfg, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from starflow.training.trainer import Trainer

    scripted = iter([1.0, 2.0, 3.0])           # validation bpd at steps 2, 4, 6: step 2 is the best
    real = Trainer.evaluate

    def evaluate(self, dataset=None):
        if dataset is not None and dataset is self.val_set:
            assert len(dataset) == 100 and len(self.train_set) == 1400
            return next(scripted)
        return real(self, dataset)
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    r = train(tiny_cfg("data.val_items=100", "log.eval_every=2", "log.keep_best=true", "optim.ema=0.5",
                       "log.ckpt_every=2", "log.keep_last=5"))
    assert [m["val_bpd"] for m in r.metrics if "val_bpd" in m] == [1.0, 2.0, 3.0, 1.0]
    assert r.metrics[-2]["best_step"] == 2
    best = load_file(tmp_path / "run" / "checkpoints" / "ckpt-00000002" / "ema.safetensors")
    for k, v in r.model.state_dict().items():
        torch.testing.assert_close(v, best[k])


def test_keep_best_needs_a_validation_split(tiny_cfg):
    from starflow.config import ConfigError
    with pytest.raises(ConfigError, match="val_items"):
        tiny_cfg("log.keep_best=true", "log.eval_every=2")


@pytest.mark.parametrize("kind", ["logit", "gaussianize"])
def test_input_transforms_are_exact_bijections(kind):
    from starflow.data import DigitsDataset
    from starflow.flow.transforms import Gaussianize, LogitTransform

    v = DigitsDataset("test").values                                   # (297, 1, 8, 8) 0..16
    tr = LogitTransform(0.01) if kind == "logit" else Gaussianize.fit(v, 17)
    x = (v[:5].double() + torch.rand(5, 1, 8, 8, dtype=torch.float64)) * 2 / 17 - 1
    t, logdet = tr.forward(x)
    torch.testing.assert_close(tr.inverse(t), x)
    xd = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(tr.forward(xd)[0].sum(), xd)            # elementwise: diagonal Jacobian
    torch.testing.assert_close(g.log().flatten(1).sum(1), logdet)
    if kind == "gaussianize":  # every pixel's marginal becomes ~N(0, 1) on the data it was fitted on
        xs = (v.double() + torch.rand(v.shape, dtype=torch.float64)) * 2 / 17 - 1
        ts = tr.forward(xs)[0]
        assert abs(float(ts.mean())) < 0.1 and abs(float(ts.std()) - 1) < 0.1


@pytest.mark.parametrize("extra", [("data.logit_alpha=0.05",), ("data.gaussianize=true",)])
def test_training_with_an_input_transform(tiny_cfg, tmp_path, extra):
    from starflow.flow.transforms import load_transform

    r = train(tiny_cfg(*extra, "optim.max_steps=2", "log.sample_every=2", "log.sample_count=2"))
    assert 0 < r.test_bpd < 8
    import json
    info = json.loads((r.checkpoint_dir / "input_transform.json").read_text())
    tr = load_transform(info, r.checkpoint_dir)
    assert tr is not None and tr.kind == info["kind"]
    # a pipeline from the trained folder samples in t-space and gives pictures of x = T^-1(t), also after a
    # save_pretrained / from_pretrained round trip
    from starflow.pipelines import StarFlowPipeline
    pipe = StarFlowPipeline.from_trained(r.checkpoint_dir)
    kw = dict(seed=3, guidance=0.0, denoise="none", progress=False)
    t = pipe(["3"], output_type="latent", **kw).images
    x = pipe(["3"], output_type="pt", **kw).images
    torch.testing.assert_close(x, ((tr.inverse(t).clamp(-1, 1) + 1) / 2))
    assert not torch.allclose(x, ((t.clamp(-1, 1) + 1) / 2))           # the transform really is undone
    pipe.save_pretrained(tmp_path / "pipe")
    again = StarFlowPipeline.from_pretrained(tmp_path / "pipe")
    assert again.input_transform.kind == tr.kind
    torch.testing.assert_close(again(["3"], output_type="pt", **kw).images, x)


def test_logit_needs_dequantisation(tiny_cfg):
    from starflow.config import ConfigError
    with pytest.raises(ConfigError, match="logit_alpha"):
        tiny_cfg("data.logit_alpha=0.05", "data.dequantize=false")


def test_gaussianize_is_fitted_on_the_training_items_only():
    from starflow.data import DigitsDataset
    from starflow.data.base import Subset
    from starflow.training.config import DataConfig
    from starflow.flow.transforms import Gaussianize
    from starflow.training.inputs import build_transform

    ds = DigitsDataset("train")
    idx = torch.arange(0, len(ds), 3)
    tr = build_transform(DataConfig(dataset="digits", dequantize=True, gaussianize=True), Subset(ds, idx))
    torch.testing.assert_close(tr.probs, Gaussianize.fit(ds.values[idx], 17).probs)
    counts = torch.nn.functional.one_hot(ds.values[idx].long(), 17).double().sum(0) + 1   # the direct count
    torch.testing.assert_close(tr.probs, counts / counts.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="pixel values"):
        Gaussianize.fit(ds.values[:4] + 17, 17)
