"""The README's training commands are ones lmlab accepts: each ``python src/train.py`` line
of its bash blocks (continuations joined, comments dropped) passes the checks a run makes
before any work, every job of a sweep included. Lines that need a file the README's reader
brings (a checkpoint, a text file, a JSONL set) or the hub, or that show a placeholder, are
left out. A bare ``-m +sweeps=NAME`` is every job of that sweep file, which
tests/test_sweeps.py checks for every file: here it is only matched to its file."""

from __future__ import annotations

import re
import shlex

import pytest

from lmlab.config import CONF_DIR

README = CONF_DIR.parent / "README.md"
# a reader's own file or the hub, or a placeholder: not checkable here
NEEDS_MORE = ("init_from=", "data.path=", "task.train=", "task.source=hf", "<", "...", "ARGS")


def readme_commands() -> list[str]:
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = [line.split(" #")[0].strip() for line in lines]
    checkable = [
        c.removeprefix("python src/train.py").strip()
        for c in commands
        if c.startswith("python src/train.py") and not any(m in c for m in NEEDS_MORE)
    ]
    return list(dict.fromkeys(checkable))  # each once


BARE_SWEEP = re.compile(r"-m \+sweeps=(\w+)")
COMMANDS = [c for c in readme_commands() if not BARE_SWEEP.fullmatch(c)]
BARE_SWEEPS = [m[1] for c in readme_commands() if (m := BARE_SWEEP.fullmatch(c))]


def test_the_readme_has_training_commands_to_check() -> None:
    assert len(COMMANDS) >= 15 and len(BARE_SWEEPS) >= 5 and "moe" in BARE_SWEEPS


def test_every_bare_sweep_the_readme_shows_is_one_test_sweeps_checks() -> None:
    sweeps = {p.stem for p in (CONF_DIR.parent / "sweeps").glob("*.yaml")}
    assert set(BARE_SWEEPS) <= sweeps, set(BARE_SWEEPS) - sweeps


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_training_command_passes_the_checks(command: str, refused_jobs) -> None:
    assert refused_jobs(*shlex.split(command)) == []


# a section whose heading is a sweep's command, and its text up to the next heading
SWEEP_SECTION = re.compile(
    r"^#+ [^\n]*`python src/train.py -m \+sweeps=(\w+)`\n(.*?)(?=^#)", flags=re.M | re.S
)
PRESET_ADVICE = re.compile(r"`(model=\w+)")


def test_a_preset_the_readme_gives_a_sweep_keeps_its_grid(multirun_config) -> None:
    """A ``model=`` preset that a sweep's section suggests (``run it with model=gpt_small``)
    must run that sweep's grid: where the sweep file varies ``model`` itself (moe), the
    command-line preset replaces the grid, and the sweep runs one job of the four."""
    from lmlab.cli.sweep_overrides import replaced_by_command_line

    advised = [
        (sweep, preset)
        for sweep, body in SWEEP_SECTION.findall(README.read_text())
        for preset in PRESET_ADVICE.findall(body)
    ]
    replaced = [
        line
        for sweep, preset in advised
        for line in replaced_by_command_line(multirun_config(f"+sweeps={sweep}", preset))
    ]
    assert replaced == []


def test_the_contents_line_links_every_section_in_order() -> None:
    """The README's first lines list its sections (``Contents: [title](#anchor) · ...``): every
    ``## `` heading, in order, each linked by GitHub's anchor for it (lower case, punctuation
    but hyphens dropped, spaces as hyphens)."""
    text = README.read_text()
    contents = re.search(r"^Contents: (.*)$", text, flags=re.M)
    assert contents, "no Contents line"
    links = re.findall(r"\[([^\]]+)\]\(#([^)]+)\)", contents[1])
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    anchors = [re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings]
    assert links == list(zip(headings, anchors, strict=True))


def architecture_block() -> str:
    """The Architecture section's tree: its first fenced block."""
    section = README.read_text().partition("\n## Architecture\n")[2].partition("\n## ")[0]
    return section.partition("\n```\n")[2].partition("\n```")[0]


def test_the_architecture_tree_names_every_module_of_the_package() -> None:
    """Each module of ``src/lmlab`` is named, by its file's stem, in the Architecture tree (the
    callbacks were described but not named: ``attention_maps``, ``extras``), and each ``.py``
    the tree names exists in the repository."""
    block = architecture_block()
    package = CONF_DIR.parent / "src" / "lmlab"
    modules = [p for p in package.rglob("*.py") if p.name != "__init__.py"]
    unnamed = [
        str(p.relative_to(package)) for p in modules if not re.search(rf"\b{p.stem}\b", block)
    ]
    assert unnamed == []
    roots = [CONF_DIR.parent / d for d in ("src", "tests", "bench", "scripts")]
    files = {p.name for root in roots for p in root.rglob("*.py")}
    assert set(re.findall(r"\b([a-z0-9_]+\.py)\b", block)) - files == set()
