"""The package's layering, read from the source: the core (config, errors, model, data) imports
no role; each role (train, infer, analysis) imports the core and no role but the one below it
(train may sample through infer); nothing imports the command line. ``files`` (records
written whole) is core too, as ``config`` and ``errors``. Checked on every import
statement, the ones inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lmlab.config import CONF_DIR

PACKAGE = CONF_DIR.parent / "src" / "lmlab"
ROLES = ("model", "data", "train", "infer", "analysis", "cli")
# what each part may import from lmlab (besides itself); config, errors, files are everyone's
CORE = ("config", "errors", "files")
ALLOWED = {
    "config": set(),
    "errors": set(),
    "files": set(),
    "model": set(),
    "data": set(),
    "infer": {"model", "data"},
    "train": {"model", "data", "infer"},
    "analysis": set(),
    "cli": {"model", "data", "train", "infer", "analysis"},
}
# third-party packages a part must not import (start-up time, and what it is for)
FORBIDDEN = {
    "config": {"torch", "lightning"},
    "errors": {"torch", "lightning", "hydra", "omegaconf"},
    "files": {"torch", "lightning", "hydra", "omegaconf"},
    "model": {"lightning", "hydra", "datasets", "tokenizers"},
    "infer": {"lightning"},
    "analysis": {"torch", "lightning"},
}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if part_of(p) != "__init__")


def test_every_module_belongs_to_a_known_part() -> None:
    assert {part_of(p) for p in MODULES} == set(ALLOWED)
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "errors.py", "files.py"]
    assert (PACKAGE / "config" / "__init__.py").is_file()  # a package: one module per group


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layering(path: Path) -> None:
    part = part_of(path)
    for name in imports(path):
        if name.startswith("lmlab."):
            target = name.split(".")[1]
            if target in CORE or target == part:
                continue
            assert target in ALLOWED[part], f"{part} imports {name}"
        for banned in FORBIDDEN.get(part, ()):
            assert name != banned and not name.startswith(banned + "."), f"{part} imports {name}"


def test_src_holds_only_the_thin_scripts_and_the_package() -> None:
    src = PACKAGE.parent
    scripts = sorted(p.stem for p in src.glob("*.py"))
    assert scripts == sorted(
        ["compare", "consolidate", "convert", "evaluate", "generate", "probe"]
        + ["scaling", "train"]
    )
    for script in src.glob("*.py"):
        code = [line for line in script.read_text().splitlines() if line and line[0] not in '#"']
        assert len(code) <= 6, f"{script.name} is more than a thin entry point"


# Heavy packages imported at module level only by the modules that exist to use them, so that
# `lmlab --help`, training without evals and the other commands never pay for them.
LAZY = {"lm_eval": {"infer/evaluate.py", "infer/eval_tokens.py"}}  # its model classes


def top_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", list(LAZY))
def test_heavy_packages_are_imported_lazily(package: str) -> None:
    eager = {
        str(p.relative_to(PACKAGE))
        for p in MODULES
        if any(n == package or n.startswith(package + ".") for n in top_level_imports(p))
    }
    assert eager <= LAZY[package], f"{package} imported at module level by {eager - LAZY[package]}"
