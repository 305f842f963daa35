"""The documents: links that resolve, no placeholders or first person outside code, a short
README whose two commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 300


def prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the text outside fenced code blocks, inline code removed (also
    where a code span runs over a line break)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            kept.append("")
        else:
            kept.append("" if fenced else line)
    joined = re.sub(r"`[^`]*`", lambda m: "\n" * m.group().count("\n"), "\n".join(kept))
    return [(n, line) for n, line in enumerate(joined.split("\n"), 1) if line.strip()]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {
        slug(line.lstrip("#"))
        for _, line in prose(path.read_text(encoding="utf-8"))
        if re.match(r"#{1,6} ", line)
    }


def links(path: Path) -> list[tuple[int, str]]:
    """Relative link targets of a document (Markdown links and images), outside code."""
    found = []
    for number, line in prose(path.read_text(encoding="utf-8")):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                found.append((number, target))
    return found


def test_the_documents_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/results.md", "docs/metrics.md", "docs/claims.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    broken = []
    for number, target in links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{doc.name}:{number}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{doc.name}:{number}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


# an ALL_CAPS_WITH_UNDERSCORES word (UNIT_TIME, EDIT_ME); environment variables are written as
# code, so in prose such a word is a placeholder left unfilled
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]\b|\bTODO\b|\bTBD\b|\bXXX\b")
# the project speaks in its own voice, and never of how it was built
FIRST_PERSON = re.compile(r"\bI\b|\b[Ss]essions?\b|\bme\b|\bmy\b")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_placeholder_or_first_person_outside_code(doc):
    slips = [
        f"{doc.name}:{number}: {line.strip()[:90]}"
        for number, line in prose(doc.read_text(encoding="utf-8"))
        if PLACEHOLDER.search(line) or FIRST_PERSON.search(line)
    ]
    assert not slips, "\n".join(slips)


def test_the_checks_catch_what_they_look_for():
    text = (
        "A `UNIT_TIME` in code is fine.\n\nThe suite takes UNIT_TIME.\n```\nI am code\n```\n"
        "I ran it. A `span over\nTWO_LINES` is code."
    )
    hits = [n for n, line in prose(text) if PLACEHOLDER.search(line) or FIRST_PERSON.search(line)]
    assert hits == [3, 7]
    assert slug("Start-up is paid once, not per job") == "start-up-is-paid-once-not-per-job"
    assert slug("The paper's configs") == "the-papers-configs"


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; depth belongs in docs/"


def readme_commands() -> list[str]:
    """The bash commands of the README's "The two commands" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [c.strip() for c in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_the_readme_commands_are_the_ones_ci_runs():
    """Each step of the README's two commands is a line of `.ci/run`, as written."""
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert commands[1].endswith("python -m pytest"), "the second command runs the tests"
    ci = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    missing = [step.strip() for c in commands for step in c.split("&&") if step.strip() not in ci]
    assert not missing, f".ci/run does not run these README steps as written: {missing}"


def test_the_test_documents_carry_no_test_counts():
    """Counts of tests go stale with every test added: the README and docs/tests.md carry none
    (dated counts from real runs live in docs/results.md)."""
    count = re.compile(r"\b\d[\d,]*\s+(tests?|passed|skipped|failed)\b")
    for doc in (ROOT / "README.md", ROOT / "docs" / "tests.md"):
        hits = [line for _, line in prose(doc.read_text(encoding="utf-8")) if count.search(line)]
        assert not hits, f"{doc.name}: {hits}"
