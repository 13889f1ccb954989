"""An output path the system refuses is one line, exit code 2, before any work: every
command that writes checks it in one place (``lmlab.config.outpath.check_writable``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

LONG = "x" * 300  # longer than any file system's name limit (255 bytes): refused for anyone


def argv(tool: str, tmp: Path, out: Path) -> list[str]:
    """``tool``'s command line writing ``out``, its input missing: the refusal of ``out``
    comes first, so the input is never looked at."""
    missing = tmp / "none.ckpt"
    sharded = tmp / "sharded"  # consolidate wants a sharded folder before it looks at out=
    sharded.mkdir(exist_ok=True)
    (sharded / "meta.pt").write_bytes(b"")
    return {
        "from_hf": ["convert", f"from_hf={tmp / 'nohf'}", f"out={out}"],
        "to_hf": ["convert", f"to_hf={missing}", f"out={out}"],
        "consolidate": ["consolidate", f"ckpt={sharded}", f"out={out}"],
        "probe": ["probe", f"ckpt={missing}", f"out={out}"],
        "scaling": ["scaling", str(tmp), "--out", str(out)],
        "evaluate": ["evaluate", f"ckpt={missing}", f"out={out}"],
    }[tool]


SUFFIX = {"from_hf": ".ckpt", "consolidate": ".ckpt", "probe": ".png", "evaluate": ".json"}
TOOLS = ["from_hf", "to_hf", "consolidate", "probe", "scaling", "evaluate"]


@pytest.mark.parametrize("tool", TOOLS)
def test_an_unwritable_out_is_one_line_before_any_work(
    tool: str, tmp_path: Path, run_command, capsys
) -> None:
    key = "--out" if tool == "scaling" else "out"
    out = tmp_path / f"{LONG}{SUFFIX.get(tool, '')}"  # the name itself cannot be created
    assert run_command(*argv(tool, tmp_path, out)) == 2
    assert (
        capsys.readouterr().err == f"error: {key}={out}: cannot write there (File name too long)\n"
    )
    out = tmp_path / LONG / f"x{SUFFIX.get(tool, '')}"  # nor a folder above it
    assert run_command(*argv(tool, tmp_path, out)) == 2
    assert (
        capsys.readouterr().err == f"error: {key}={out}: cannot write there (File name too long)\n"
    )
    afile = tmp_path / "afile"  # under a file: NotADirectoryError, for root too
    afile.write_text("notes\n")
    out = afile / f"x{SUFFIX.get(tool, '')}"
    assert run_command(*argv(tool, tmp_path, out)) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(f"error: {re.escape(f'{key}={out}')}: .*\n", err), err
    assert afile.read_text() == "notes\n"


@pytest.mark.parametrize("tool", TOOLS)
def test_the_writability_check_leaves_nothing_behind(
    tool: str, tmp_path: Path, run_command, capsys
) -> None:
    """The check makes the missing folders and a temporary file to try, and removes them: the
    command, refused afterwards for its missing input, leaves the tree as it was."""
    out = tmp_path / "new" / "deeper" / f"x{SUFFIX.get(tool, '')}"
    args = argv(tool, tmp_path, out)
    before = sorted(tmp_path.rglob("*"))
    assert run_command(*args) != 0
    capsys.readouterr()
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("tool", TOOLS)
def test_an_out_inside_a_sharded_checkpoint_is_refused(
    tool: str, tmp_path: Path, run_command, capsys
) -> None:
    """A file written inside a run's sharded ``last.ckpt`` folder was lost at the run's next
    save, which replaces that folder whole: such an ``out`` is refused, one line, before any
    work (a folder of that name without the shards' ``meta.pt`` is no checkpoint)."""
    key = "--out" if tool == "scaling" else "out"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.mkdir(parents=True)
    for out in (last / f"x{SUFFIX.get(tool, '')}", last / "new" / f"x{SUFFIX.get(tool, '')}"):
        (last / "meta.pt").write_bytes(b"")
        assert run_command(*argv(tool, tmp_path, out)) == 2
        err = capsys.readouterr().err
        assert err == (
            f"error: {key}={out} is inside the sharded checkpoint {last}, which its next save "
            "replaces whole: choose a path outside it\n"
        )
        assert sorted(p.name for p in last.iterdir()) == ["meta.pt"]
        (last / "meta.pt").unlink()  # a folder named .ckpt, no checkpoint: not refused so
        assert run_command(*argv(tool, tmp_path, out)) != 0
        assert "is inside the sharded checkpoint" not in capsys.readouterr().err
