"""The inpainting / editing figures of the demo, on a tiny trained digits model: well-formed, the known
pixels exact, an unchanged edit exact; the 'allowed target' rule on real digits."""
import numpy as np
import torch

from starflow.data.digits import digits_split, load_digits_arrays
from starflow.evaluation.inpainting import allowed_targets, evaluate_inpainting
from starflow.pipelines import StarFlowPipeline


def test_figures_on_a_tiny_model(trained_digits):
    pipe = StarFlowPipeline.from_pretrained(trained_digits[0])
    f = evaluate_inpainting(pipe, items=12, iterations=1, edit_strength=0.8, dequantized=True, batch_size=6,
                            progress=False, jacobi_block_size=16)
    assert f.items == 12 and 0 < f.lower_other_items <= 12
    for v in (f.lower_right, f.box_right, f.lower_other, f.edit_target):
        assert 0.0 <= v <= 1.0
    assert f.known_max_change == 0.0                      # the known pixels are pasted back, exactly
    assert f.edit_identity_max_err < 1e-4                 # strength 0, same prompt, exact sampler
    assert f.pictures["lower"].shape == (24, 1, 8, 8) and f.pictures["edit"].shape[0] == 2 * f.lower_other_items


def test_allowed_targets_follow_the_nearest_upper_halves():
    values, labels = load_digits_arrays()
    train, test = digits_split()
    v = values[test[:60]].float().reshape(60, 64)[:, :32].numpy()
    src = labels[test[:60]].numpy()
    t = allowed_targets(v, src)
    assert ((t == -1) | ((t >= 0) & (t != src))).all()      # never the source digit itself
    assert (t >= 0).mean() > 0.5                             # most upper halves allow some other digit
    # a training seven's own upper half, asked for as if it were a one: seven is the digit it allows
    seven = values[train][labels[train] == 7][:5].float().reshape(5, 64)[:, :32].numpy()
    assert (allowed_targets(seven, np.full(5, 1)) == 7).all()
