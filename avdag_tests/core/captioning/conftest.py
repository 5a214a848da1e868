"""Captioning fixtures: a tiny model fine-tuned to answer each of a few clips differently."""

import pytest

from avdag_tests.support.finetuned_model import FinetunedClips, finetuned_clip_model


@pytest.fixture(scope="session")
def finetuned_clips(tiny_model_path, tmp_path_factory) -> FinetunedClips:
    """Trained once per session (about half a minute on a CPU) by the project's embedded SFT loop."""
    return finetuned_clip_model(tiny_model_path, tmp_path_factory.mktemp("finetuned_clips"))
