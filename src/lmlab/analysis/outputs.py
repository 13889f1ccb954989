"""The two files an analysis command writes into a folder (``compare.json`` and
``compare.png``, ``scaling.json`` and ``scaling.png``), and whether a file of that name there
is the command's own: a rerun replaces its own, and a user's file of the same name is refused
before any work, kept byte for byte (``lmlab.config.outpath``'s rule: nothing the user has is
overwritten unless the command owns it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import ConfigError


@dataclass(frozen=True)
class Outputs:
    """``<command>.json`` and ``<command>.png``, known for the command's own by the JSON's
    top-level keys and the PNG's ``Creator`` mark (its ``savefig`` metadata)."""

    command: str
    """``compare``: the files are ``compare.json`` and ``compare.png``."""
    json_keys: frozenset[str]
    """Top-level keys every JSON the command wrote holds (its earlier versions' included)."""
    creator: str
    """The PNG's ``Creator`` (``lmlab compare``), written by ``savefig(metadata=...)``."""

    @property
    def json_name(self) -> str:
        return f"{self.command}.json"

    @property
    def png_name(self) -> str:
        return f"{self.command}.png"

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is a file the command wrote: the JSON by its keys, the PNG by its
        ``Creator`` alone: a user's PNG put beside the command's own JSON is kept, and so is
        one a version before the mark wrote (refused like a user's: remove it to redraw)."""
        try:
            if path.suffix == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
                return isinstance(data, dict) and data.keys() >= self.json_keys
            return self.creator.encode() in path.read_bytes()
        except (OSError, ValueError):  # unreadable or no JSON: not known to be its own
            return False

    def check(self, out_dir: Path, error: type[ConfigError] = ConfigError) -> None:
        """Raise ``error`` (one line) where writing both files into ``out_dir`` would replace
        a file the command did not write, or ``out_dir`` is a file; call it before any work."""
        if out_dir.exists() and not out_dir.is_dir():
            raise error(f"--out {out_dir} is a file: give a folder (nothing is overwritten)")
        for name in (self.json_name, self.png_name):
            target = out_dir / name
            if (target.exists() or target.is_symlink()) and not (
                target.is_file() and self.owns(target)
            ):
                raise error(
                    f"{target} exists and is not {self.command}'s own output: choose another "
                    "folder with --out (nothing is overwritten)"
                )
