"""A run's text records written whole: the old file or the new one, never half of one, and a
failed write leaves no temporary file and names the file it was writing. Read back, a record
that is missing or damaged is nothing, never an error."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from lmlab.files import read_json, read_record, write_json, write_text


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

    def fails(self: Path, data: bytes, *args: object, **kwargs: object) -> int:
        self.touch()  # the file is made, its data do not fit
        raise error

    monkeypatch.setattr(Path, "write_bytes", fails)
    with pytest.raises(type(error)) as raised:
        write_json(path, {"status": "failed"})
    monkeypatch.undo()
    if isinstance(error, OSError):
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert path.read_text() == "the old record"


@pytest.mark.parametrize(
    ("content", "json_value", "record"),
    [
        (None, None, {}),  # missing
        (b'{"status": "completed"}', {"status": "completed"}, {"status": "completed"}),
        (b'{"status": "comp', None, {}),  # cut short by a kill
        (b"[1, 2]", [1, 2], {}),  # JSON, not an object
        (b'{"name": "\xff"}', None, {}),  # not UTF-8
        (b"", None, {}),
    ],
)
def test_a_missing_or_damaged_record_reads_as_nothing(
    tmp_path: Path, content: bytes | None, json_value: object, record: dict
) -> None:
    path = tmp_path / "results.json"
    if content is not None:
        path.write_bytes(content)
    assert read_json(path) == json_value
    assert read_record(path) == record
    assert read_record(tmp_path) == {}  # a folder where the file goes


def test_a_figure_is_replaced_whole_and_a_kill_while_it_is_written_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compare.png, scaling.png and probe's plot were saved in place: a kill while one was
    written left it truncated (0 bytes for about 0.1 s), and the next compare refused the
    folder, taking that file for the user's. Now the old figure stays whole until the new one
    replaces it, and is still compare's own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lmlab.analysis.compare import OUTPUTS
    from lmlab.files import save_figure

    fig = Figure(figsize=(2, 2))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1], [1, 0])
    path = tmp_path / "compare.png"
    save_figure(fig, path, metadata={"Creator": OUTPUTS.creator})
    old = path.read_bytes()
    assert old.startswith(b"\x89PNG") and OUTPUTS.owns(path)

    def killed(self: Path, data: bytes) -> int:
        self.write_text("half")  # as far as the write got
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, path, metadata={"Creator": OUTPUTS.creator})
    monkeypatch.undo()
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == [path.name]
    OUTPUTS.check(tmp_path)  # the next compare may replace it
