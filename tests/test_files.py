"""A run's text records written whole: the old file or the new one, never half of one, and a
failed write leaves no temporary file and names the file it was writing."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from lmlab.files import write_json, write_text


def test_a_record_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "results.json"  # its folder made
    write_json(path, {"status": "running"})
    write_json(path, {"status": "completed", "step": 4})
    assert json.loads(path.read_text()) == {"status": "completed", "step": 4}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


@pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()]
)
def test_a_record_that_cannot_be_written_leaves_the_old_one_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """A full disk while results.json was written left a 0-byte ``.results.json.<pid>.tmp``
    behind, there after the resume too, and said ``[Errno 28]`` naming no file; a Ctrl-C
    there left the temporary file too."""
    path = tmp_path / "results.json"
    write_text(path, "the old record")

    def fails(self: Path, text: str, *args: object, **kwargs: object) -> int:
        self.touch()  # the file is made, its data do not fit
        raise error

    monkeypatch.setattr(Path, "write_text", fails)
    with pytest.raises(type(error)) as raised:
        write_json(path, {"status": "failed"})
    monkeypatch.undo()
    if isinstance(error, OSError):
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert path.read_text() == "the old record"
