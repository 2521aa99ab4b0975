"""Every lesson runs end to end in fast mode, asserts its own claims, opens as a notebook, and cites only notes
that exist."""
import os
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import skip_without_smollm2

ROOT = Path(__file__).parent.parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
NOTES = ROOT / "lessons" / "NOTES.md"


def lesson_number(path: Path) -> int:
    return int(path.name[:2])


@pytest.fixture
def workdir(lesson_workdir):
    return lesson_workdir


def test_there_are_lessons():
    assert len(LESSONS) >= 6


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_in_fast_mode(path, workdir, monkeypatch, capsys):
    skip_without_smollm2(path)
    text = path.read_text()
    assert text.startswith("# %% [markdown]") and text.count("# %%") >= 4  # jupytext percent format
    assert "## Exercises" in text, "every lesson ends with two or three exercises"
    in_markdown = False
    for i, line in enumerate(text.splitlines(), 1):  # code inside a markdown cell would never run in a notebook
        if line.startswith("# %%"):
            in_markdown = "[markdown]" in line
        elif in_markdown:
            assert not line.strip() or line.startswith("#"), f"{path.name}:{i}: code in a markdown cell: {line!r}"
    # Run as `python lessons/NN_….py` would, but in this process: a fresh interpreter per lesson costs seconds of
    # imports each (torch, matplotlib, torch._dynamo). The lesson gets its own globals, working folder, environment
    # and random state; the thread count and open figures are restored afterwards.
    for key, value in {"TINYLD_FAST": "1", "TINYLD_OUT": str(workdir / "figures"), "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", [str(path)])
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng():
            runpy.run_path(str(path), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and lines[-1] == f"lesson {lesson_number(path)} OK", lines[-20:]


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_opens_as_notebook(path):
    """The README promises that each lesson opens as a notebook: jupytext must turn it into prose and code cells."""
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    nb = jupytext.read(path)
    nbformat.validate(nb)
    kinds = [c.cell_type for c in nb.cells]
    assert len(nb.cells) >= 4, kinds
    assert kinds[0] == "markdown" and "code" in kinds
    assert any("## Exercises" in c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f'print("lesson {lesson_number(path)} OK")' in code, "the final OK line must be in a code cell"
    assert not any(c.source.lstrip().startswith("# %%") for c in nb.cells), "a cell marker was not recognised"


def test_a_lesson_executes_as_a_notebook(workdir, monkeypatch):
    """Run lesson 1 through a real Jupyter kernel, in fast mode, and check it ends with its OK line."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    path = next(p for p in LESSONS if lesson_number(p) == 1)
    nb = jupytext.read(path)
    # a first cell that reports which Python runs the kernel: it must be this environment (the venv)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print('KERNEL-PREFIX', sys.prefix)"))
    for key, value in {"TINYLD_FAST": "1", "TINYLD_OUT": str(workdir / "nb_figures"), "MPLBACKEND": "Agg",
                       "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert f"KERNEL-PREFIX {sys.prefix}" in text, "the 'python3' kernel runs another Python than the tests"
    assert "lesson 1 OK" in text
    assert (workdir / "nb_figures" / "01_A.png").exists()


def test_notes_have_the_numbered_sections_that_are_cited():
    """Code and lessons cite "lessons/NOTES.md §N": every cited section must exist, under its number."""
    notes = NOTES.read_text()
    sections = {int(n) for n in re.findall(r"^## §(\d+) ", notes, flags=re.M)}
    assert sections == set(range(1, 8)), sorted(sections)
    cited = set()
    for f in [*ROOT.glob("tinyld/*.py"), *LESSONS, ROOT / "README.md", NOTES]:
        cited |= {int(n) for n in re.findall(r"NOTES(?:\.md)? §(\d+)", f.read_text())}
    assert cited <= sections, f"cited sections that do not exist: {sorted(cited - sections)}"


@pytest.mark.parametrize("path", [*LESSONS, NOTES], ids=[p.name for p in [*LESSONS, NOTES]])
def test_lessons_point_only_at_what_exists(path):
    """Users do not have the project's private notes, and a lesson must not promise lessons or code that are not
    there."""
    text = path.read_text()
    assert "paper.md" not in text
    assert not re.search(r"later lessons?|lessons on DPO", text)
    for n in re.findall(r"\blesson (\d+)\b", text, flags=re.I):
        assert any(lesson_number(p) == int(n) for p in LESSONS), f"{path.name} points at lesson {n}"


def test_render_writes_a_lesson_as_a_notebook_and_a_self_contained_page(workdir, monkeypatch, capsys):
    """`python -m tinyld lessons --render OUT --only 01`: the executed notebook, an HTML page with the figures inline
    (readable without the PNG files), the figures at slide resolution, and the index in course order."""
    for module in ("jupytext", "nbclient", "nbconvert", "ipykernel"):
        pytest.importorskip(module)
    import struct

    from tinyld.__main__ import main

    monkeypatch.chdir(workdir)
    out = workdir / "rendered"
    assert main(["lessons", "--render", str(out), "--only", "01", "--lessons", str(ROOT / "lessons")]) == 0
    page = (out / "01_softmax_jacobian.html").read_text()
    assert "lesson 1 OK" in page and "Traceback" not in page
    pngs = sorted((out / "figures").glob("01_*.png"))
    assert len(pngs) >= 2 and page.count("data:image/png;base64") >= len(pngs)  # each figure inline
    width = struct.unpack(">I", pngs[0].read_bytes()[16:20])[0]
    assert width >= 900, width  # 200 dpi (the lessons write 110 by default): fit for a slide
    assert '<a href="01_softmax_jacobian.html">' in (out / "index.html").read_text()
    assert (out / "01_softmax_jacobian.ipynb").exists()
    assert main(["lessons", "--render", str(out), "--only", "99", "--lessons", str(ROOT / "lessons")]) == 2
    assert "lessons --only 99: no such lesson" in capsys.readouterr().err
