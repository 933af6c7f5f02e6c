"""The repository is its own map: every reference to a design note in the code, the tests and
the README names a file in docs/, and every section it cites by title is a heading there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*ROOT.glob("app/**/*.py"), *ROOT.glob("bot/**/*.py"), *ROOT.glob("tokens/**/*.py"),
           *ROOT.glob("tokens/*.yaml"), *ROOT.glob("migrations/**/*.py"),
           *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/**/*.py"), *ROOT.glob("sim/**/*.py"),
           *ROOT.glob("testing/**/*.py"),
           ROOT / "README.md"]
CITATION = re.compile(r"docs/([A-Za-z_-]+\.md)(?:,\s*\"([^\"]+)\")?")
BARE_NOTE = re.compile(r"(?<![\w/.-])(architecture|economy|messaging|payments)\.md")


def headings(note: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in note.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")]


def flat(text: str) -> str:
    """`text` on one line, lower case, without markdown emphasis, quote marks, comment
    markers or the line breaks of wrapped text."""
    text = re.sub(r"\n\s*#?", " ", text).lower()
    return " ".join(re.sub(r"[*'\"`]", "", text).split())


def cited(note: Path, quoted: str) -> bool:
    """Whether `quoted` is a heading of `note` (or starts one), or a rule quoted from it."""
    quoted = flat(quoted)
    titles = headings(note)
    return (any(flat(h).startswith(quoted) or quoted.startswith(flat(h)) for h in titles)
            or quoted in flat(note.read_text(encoding="utf-8")))


def test_every_design_note_cited_exists_with_its_sections():
    missing: list[str] = []
    for source in SOURCES:
        if source.resolve() == Path(__file__).resolve():
            continue
        text = source.read_text(encoding="utf-8")
        where = source.relative_to(ROOT)
        assert "shared/design" not in text, f"{where} cites a note outside the repository"
        assert not BARE_NOTE.search(text), f"{where}: cite design notes as docs/<note>.md"
        for name, section in CITATION.findall(text):
            note = ROOT / "docs" / name
            if not note.is_file():
                missing.append(f"{where}: docs/{name}")
            elif section and not cited(note, section):
                missing.append(f"{where}: docs/{name}, section {section!r}")
    assert not missing, "\n".join(sorted(set(missing)))


def _map_entries() -> set[str]:
    """The first word of each line of the README's map ("## How it is built")."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## How it is built", 1)[1].split("```", 2)[1]
    return {line.split()[0] for line in block.splitlines() if line and not line[0].isspace()}


def test_the_readme_map_names_exactly_the_tree():
    """Every top-level folder the repository tracks (and wsgi.py) has a line in the README's
    map, and every line names one of them; the subfolders of tests/ it names exist."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    folders = {path.split("/", 1)[0] + "/" for path in listed if "/" in path}
    assert _map_entries() == folders | {"wsgi.py"}
    for folder in ("app", "bot", "tokens", "sim", "testing", "system"):
        assert (ROOT / "tests" / folder).is_dir(), folder
