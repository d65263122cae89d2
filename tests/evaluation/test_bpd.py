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
