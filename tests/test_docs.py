"""The documentation a newcomer reads: the README is a front door (short, the lessons on its first screen), every
relative link resolves, CI runs the README's two commands as written, and the course kit covers every lesson."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "tinyld" / "REFERENCE.md", ROOT / "tinyld" / "experiments" / "README.md",
         ROOT / "lessons" / "NOTES.md", ROOT / "lessons" / "COURSE.md"]
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, "the README stays a front door: move detail to tinyld/REFERENCE.md or the lab reports"
    first_screen = "\n".join(lines[:60])
    assert "| lesson |" in first_screen, "the lesson table belongs on the first screen"
    table = "\n".join(lines)
    for path in LESSONS:
        assert f"(lessons/{path.name})" in table, f"{path.name} is missing from the README's lesson table"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_resolves(page):
    text = page.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links or page.name == "NOTES.md"
    missing = []
    for link in links:
        if link.startswith(("http://", "https://", "#")):
            continue
        target = (page.parent / link.split("#")[0]).resolve()
        if not target.exists():
            missing.append(link)
    assert missing == []


def test_ci_runs_the_readme_commands_as_written():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci, f"CI does not run the README's {command!r}"


def test_the_course_covers_every_lesson_and_has_a_glossary():
    course = (ROOT / "lessons" / "COURSE.md").read_text()
    path = course.split("## The path", 1)[1].split("##", 1)[0]
    weeks = [row for row in path.splitlines() if re.match(r"\| \d\. ", row)]
    assert len(weeks) == 4
    taught = {int(n) for row in weeks for n in re.findall(r"\b(\d\d)\b", row.split("|")[2])}
    assert taught == {int(p.name[:2]) for p in LESSONS}
    for lesson in LESSONS:  # every lesson's exercises, solutions and rendered page, week by week
        for link in (f"(exercises/{lesson.name})", f"(solutions/{lesson.name})", f"`site/{lesson.stem}.html`"):
            assert link in course, link
    glossary = course.split("## Glossary", 1)[1]
    for term in ("A", "K", "G", "π", "η", "y\\*", "y_init", "valley depth", "PM", "CHES", "`other_chosen`",
                 "`ProbeSet`"):
        assert f"| {term}" in glossary or term in glossary, term
