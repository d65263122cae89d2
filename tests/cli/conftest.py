"""Shared by the command-line tests: a tiny trained digits model."""
import pytest

from ..evaluation.tiny_nets import train_tiny_digits


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    return train_tiny_digits(tmp_path_factory.mktemp("tiny_run"))
