import pytest
import torch
from hypothesis import settings

# Tests are deterministic: hypothesis draws the same examples on every run and keeps no database.
settings.register_profile("tinyld", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile("tinyld")

from tinyld import GPT, GPTConfig
from tinyld.world import World


@pytest.fixture(scope="session")
def lesson_workdir(tmp_path_factory):
    """The working folder of lessons and exercises: the pretrained base models are cached here once per session."""
    return tmp_path_factory.mktemp("lessons")


@pytest.fixture(scope="session")
def world():
    return World(0)


@pytest.fixture(scope="session")
def wtok(world):
    return world.tokenizer()


@pytest.fixture
def tiny64(wtok):
    """A float64 tiny model on the world's vocabulary."""
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)).double().eval()


@pytest.fixture(scope="session")
def gpt2_64():
    """The gpt2 preset (124M) in float64 — built once per session."""
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2")).double().eval()
