"""The lessons, rendered for reading without running them: each lesson executed as a notebook (fast or full mode)
and written with its outputs (``NN_name.ipynb``) and as one self-contained HTML page with its figures inline
(``NN_name.html``), the figures also as PNGs fit for slides (``figures/``), and an index page in course order.

``python -m tinyld lessons --render OUT`` runs it. It needs the ``[lessons]`` extra (jupytext, nbclient,
nbconvert, ipykernel), imported only here.
"""
from __future__ import annotations

import base64
import contextlib
import html
import os
import re
import time
from pathlib import Path

from tinyld.runtime import TinyldError, writable_dir

SLIDE_DPI = 200  # the figures' resolution when rendered (the lessons' default is 110)
FIGURE_LINE = re.compile(r"figures?: (\S+\.png)")  # how a lesson announces a figure it wrote
WEEKS = (("Week 1: one step of learning", (0, 1, 2)), ("Week 2: similarity and the one-step check", (3, 4, 5)),
         ("Week 3: what SFT does", (6, 7, 8)), ("Week 4: what DPO does, and forecasting it", (9, 10, 11, 12)),
         ("Extras: scaling up; a real LLM; explain; RL", (13, 14, 15, 16)))  # as COURSE.md


def notebook_tools():
    """(jupytext, nbformat, nbclient, nbconvert), or one error that says how to install them."""
    try:
        import jupytext
        import nbclient
        import nbconvert
        import nbformat
    except ImportError as e:
        raise TinyldError(f"rendering the lessons needs jupytext, nbclient, nbconvert and ipykernel ({e.name} is "
                          "missing): pip install \".[lessons]\"") from None
    return jupytext, nbformat, nbclient, nbconvert


def find_lessons(folder, only: list[str] | None = None) -> list[Path]:
    """The lesson scripts ``NN_name.py`` in ``folder`` (``only``: those whose number or name is listed)."""
    folder = Path(folder)
    lessons = sorted(folder.glob("[0-9][0-9]_*.py"))
    if not lessons:
        raise TinyldError(f"no lessons (NN_name.py) in {str(folder)!r}: run from the project's folder, or give "
                          "--lessons DIR")
    if only:
        keep = [p for p in lessons if any(p.name.startswith(k.zfill(2)) or p.stem == k for k in only)]
        unknown = [k for k in only if not any(p.name.startswith(k.zfill(2)) or p.stem == k for p in lessons)]
        if unknown:
            raise TinyldError(f"lessons --only {' '.join(unknown)}: no such lesson; the lessons are "
                              f"{', '.join(p.name[:2] for p in lessons)}")
        lessons = keep
    return lessons


@contextlib.contextmanager
def lesson_environment(figures: Path, full: bool):
    """The environment the kernel inherits: fast or full mode, where figures go and at what resolution."""
    keys = {"TINYLD_OUT": str(figures), "MPLBACKEND": "Agg", "TINYLD_DPI": str(SLIDE_DPI)}
    old = {k: os.environ.get(k) for k in [*keys, "TINYLD_FAST"]}
    os.environ.update(keys)
    if full:
        os.environ.pop("TINYLD_FAST", None)
    else:
        os.environ["TINYLD_FAST"] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def inline_figures(nb, nbformat) -> int:
    """After each code cell that announces a figure (``figure: path.png``), add the image to the cell's outputs, so
    that the notebook and its HTML page show it without the file. Returns how many were added."""
    added = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        for path in FIGURE_LINE.findall(text):
            if Path(path).is_file():
                data = base64.b64encode(Path(path).read_bytes()).decode()
                cell.outputs.append(nbformat.v4.new_output("display_data", data={"image/png": data}))
                added += 1
    return added


def render_one(path: Path, out: Path, full: bool, timeout: int) -> dict:
    """Execute one lesson as a notebook and write its .ipynb and .html; a record of what happened."""
    jupytext, nbformat, nbclient, nbconvert = notebook_tools()
    nb = jupytext.read(path)
    t0 = time.perf_counter()
    error = None
    with lesson_environment(out / "figures", full):
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                         resources={"metadata": {"path": os.getcwd()}})
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as e:
            error = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    figures = inline_figures(nb, nbformat)
    nbformat.write(nb, out / f"{path.stem}.ipynb")
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    (out / f"{path.stem}.html").write_text(body, encoding="utf-8")
    return {"lesson": path.stem, "seconds": round(time.perf_counter() - t0, 1), "figures": figures, "error": error}


def index_page(records: list[dict], full: bool) -> str:
    """An HTML page that lists the rendered lessons in course order."""
    by_number = {int(r["lesson"][:2]): r for r in records}
    rows = []
    for title, numbers in WEEKS:
        items = [by_number[n] for n in numbers if n in by_number]
        if items:
            rows.append(f"<h2>{html.escape(title)}</h2><ul>")
            rows += [f'<li><a href="{r["lesson"]}.html">{html.escape(r["lesson"])}</a>'
                     + (f" (failed: {html.escape(r['error'])})" if r["error"] else "") + "</li>" for r in items]
            rows.append("</ul>")
    mode = "full mode" if full else "fast mode (TINYLD_FAST=1): the numbers mean less than in full mode"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>tinyld lessons</title></head><body>"
            f"<h1>tinyld lessons</h1><p>Executed in {mode}.</p>{''.join(rows)}</body></html>\n")


def render_lessons(out, lessons: str = "lessons", full: bool = False, only: list[str] | None = None,
                   timeout: int = 3600) -> list[dict]:
    """Render the lessons into ``out``: one .ipynb and one .html per lesson, the figures, and index.html."""
    notebook_tools()
    paths = find_lessons(lessons, only)
    out = writable_dir(out, "lessons --render folder").resolve()
    writable_dir(out / "figures", "figures folder")
    records = []
    for path in paths:
        print(f"  {path.name} …", end=" ", flush=True)
        rec = render_one(path, out, full, timeout)
        print(f"{rec['seconds']} s, {rec['figures']} figures" + (f", FAILED: {rec['error']}" if rec["error"] else ""),
              flush=True)
        records.append(rec)
    (out / "index.html").write_text(index_page(records, full), encoding="utf-8")
    return records
