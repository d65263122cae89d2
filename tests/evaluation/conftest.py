"""A tiny trained digits model shared by the evaluation tests."""
from __future__ import annotations

import pytest

from .tiny_nets import train_tiny_digits


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """(the trained model folder, the training run's own held-out bits/dim: 24 items, 2 draws)."""
    return train_tiny_digits(tmp_path_factory.mktemp("tiny_run"))
