"""Session-wide test settings: offline hubs, quiet transformers, one avdag home per session."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
for name in ("OPENAI_API_KEY", "AVDAG_MODEL", "AVDAG_LANDING_URL"):
    os.environ.pop(name, None)  # the tests choose their own judge, model and landing zone

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def avdag_home(tmp_path_factory):
    """A fresh $AVDAG_HOME: the tiny model is built there once and shared by every test."""
    home = tmp_path_factory.mktemp("avdag_home")
    os.environ["AVDAG_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    (home / "dagster").mkdir()
    return home


@pytest.fixture(scope="session")
def tiny_model_path(avdag_home):
    """The embedded tiny Qwen2.5-VL model, built as the demo builds it."""
    from avdag.resources.captioner import CaptionerResource

    return CaptionerResource().base_model_path()
