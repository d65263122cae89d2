import json

import pytest
import torch

from starflow.evaluation.bpd import evaluate_bpd
from starflow.evaluation.sources import bpd_inputs, eval_data_config
from starflow.pipelines import StarFlowPipeline


@pytest.fixture(scope="module")
def setup(trained_digits):
    folder, _ = trained_digits
    pipe = StarFlowPipeline.from_trained(folder)
    dataset, inputs = bpd_inputs(pipe, eval_data_config(pipe))
    return pipe, dataset, inputs


def test_bpd_equals_the_training_runs_held_out_figure(setup, trained_digits):
    pipe, dataset, inputs = setup
    r = evaluate_bpd(pipe.flow, dataset, inputs, draws=2, batch_size=5, max_items=24, progress=False)
    assert r.bpd == pytest.approx(trained_digits[1], abs=1e-6)
    assert r.items == 24 and r.draws == 2 and r.unit == "bits/dim"
    assert r.protocol["input_transform"]["kind"] == "gaussianize"
    assert r.protocol["noise"]["kind"] == "uniform dequantisation"
    assert sum(r.per_draw) / 2 == pytest.approx(r.bpd, abs=1e-9)
    assert 0 < r.stderr < 1


class Interrupted(Exception):
    pass


class StopsAfter:
    """The dataset, but reading stops (as a killed run would) after `batches` batches."""

    def __init__(self, dataset, batches):
        self.dataset, self.left = dataset, batches

    def __len__(self):
        return len(self.dataset)

    def get_batch(self, idx):
        if self.left == 0:
            raise Interrupted
        self.left -= 1
        return self.dataset.get_batch(idx)


def test_an_interrupted_run_resumes_to_the_same_figure(setup, tmp_path):
    pipe, dataset, inputs = setup
    kw = dict(draws=2, batch_size=5, max_items=24, progress=False, settings={"model": "tiny"})
    whole = evaluate_bpd(pipe.flow, dataset, inputs, **kw)
    partial = tmp_path / "bpd_partial.json"
    with pytest.raises(Interrupted):
        evaluate_bpd(pipe.flow, StopsAfter(dataset, 3), inputs, partial=partial, **kw)
    state = json.loads(partial.read_text())
    assert state["next_item"] == 15
    resumed = evaluate_bpd(pipe.flow, StopsAfter(dataset, 2), inputs, partial=partial, **kw)   # 2 batches left
    assert resumed.resumed_at == 15
    assert resumed.bpd == pytest.approx(whole.bpd, abs=1e-12)
    assert resumed.stderr == pytest.approx(whole.stderr, abs=1e-12)
    with pytest.raises(ValueError, match="other settings.*draws"):
        evaluate_bpd(pipe.flow, dataset, inputs, partial=partial, **{**kw, "draws": 3})


def test_stderr_is_over_items_of_their_mean_over_draws(setup):
    pipe, dataset, inputs = setup
    r = evaluate_bpd(pipe.flow, dataset, inputs, draws=2, batch_size=8, max_items=16, progress=False)
    per_item = torch.tensor([evaluate_bpd(pipe.flow, dataset, inputs, draws=2, batch_size=1, max_items=i + 1,
                                          progress=False).bpd * (i + 1) for i in range(16)], dtype=torch.float64)
    item = torch.cat([per_item[:1], per_item[1:] - per_item[:-1]])      # each item's own mean over draws
    assert item.mean().item() == pytest.approx(r.bpd, abs=1e-9)
    assert (item.std() / 4).item() == pytest.approx(r.stderr, rel=1e-6)


def test_pipeline_without_training_data_needs_data_and_protocol(setup, tmp_path):
    from starflow.config import ConfigError

    pipe, _, _ = setup
    pipe.training_info = None            # a pipeline folder that does not say how it was trained
    pipe.save_pretrained(tmp_path / "p")
    loaded = StarFlowPipeline.from_pretrained(tmp_path / "p")
    assert loaded.training_info is None
    with pytest.raises(ConfigError, match="--data digits"):
        eval_data_config(loaded)
    data = eval_data_config(loaded, {"dataset": "digits"})
    assert data.dequantize      # it was trained behind an input transform: dequantised pixels
    loaded.input_transform = None
    with pytest.raises(ConfigError, match="--dequantize.*--noise-std"):
        bpd_inputs(loaded, eval_data_config(loaded, {"dataset": "digits"}))
    noisy = eval_data_config(loaded, {"dataset": "digits", "noise_std": 0.1})
    _, inputs = bpd_inputs(loaded, noisy)
    r = evaluate_bpd(loaded.flow, *bpd_inputs(loaded, noisy), draws=1, batch_size=8, max_items=8, progress=False)
    assert r.protocol["noise"] == {"kind": "gaussian", "sigma": 0.1, "formula": "x = v 2/(L-1) - 1 + sigma eps"}
    assert inputs.cond.mode == "labels"


def test_latent_models_report_bits_per_latent_dimension(setup):
    from starflow.evaluation.bpd import bpd_protocol

    pipe, _, inputs = setup

    class AE:
        spec = "kl:/somewhere"
    inputs_latent = type(inputs)(inputs.data, 0, inputs.cond, AE(), inputs.device, 0, 1, None)
    proto, unit = bpd_protocol(inputs_latent)
    assert unit == "bits per latent dimension" and "not comparable" in proto["note"]
    assert proto["space"] == "latent" and proto["autoencoder"] == "kl:/somewhere"
