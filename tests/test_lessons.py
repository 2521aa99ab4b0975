"""Every lesson runs end to end in fast mode and asserts its own claims."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).parent.parent / "lessons").glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lessons")  # shared: the pretrained model is cached here between lessons


def test_there_are_lessons():
    assert len(LESSONS) >= 6


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_in_fast_mode(path, workdir):
    text = path.read_text()
    assert text.startswith("# %% [markdown]") and text.count("# %%") >= 4  # jupytext percent format
    env = {**os.environ, "TINYLD_FAST": "1", "TINYLD_OUT": str(workdir / "figures"), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(path)], cwd=workdir, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert r.stdout.strip().splitlines()[-1].endswith("OK")
