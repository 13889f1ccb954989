"""lmlab's run and sweep folders inside a ``data=text`` corpus folder (``data.path=.`` from a
project folder, where Hydra's ``outputs/`` and ``multirun/`` land): left out of the corpus,
its cache key and its text digest, so that a run does not train on an earlier one's logs and
records and a resume finds the corpus it started on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_data import write

from lmlab.config import DataConfig, Source, TokenizerKind
from lmlab.data.folders import text_files
from lmlab.data.packing import prepare, text_digest
from lmlab.data.sources import fingerprint, load_documents
from lmlab.errors import ConfigError
from lmlab.train.compose import compose_train
from lmlab.train.preflight import check_run

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 20
ZIP = b"PK\x03\x04" + b"\x00\xff" * 20  # a checkpoint: not UTF-8 text


def corpus_cfg(corpus: Path, tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(
        source=Source.text,
        path=str(corpus),
        cache_dir=str(tmp_path / "cache"),
        tokenizer=TokenizerKind.char,
        **kw,
    )


def fill_run(folder: Path) -> None:
    """What a run leaves in its folder besides Hydra's and lmlab's marks."""
    write(folder / "train.log", b"[2025-01-01][lmlab.train.run][INFO] - results: ...\n")
    write(folder / "results.json", b'{"status": "completed"}\n')
    write(folder / "checkpoints" / "last.ckpt", ZIP)


MARKS = {
    ".hydra/": lambda run: write(run / ".hydra" / "config.yaml", b"seed: 1\n"),
    ".lmlab.lock": lambda run: write(run / ".lmlab.lock", b"123\n"),
    ".lmlab-sweep.lock": lambda run: write(run / ".lmlab-sweep.lock", b"123\n"),
    "multirun.yaml": lambda run: write(run / "multirun.yaml", b"hydra: {}\n"),
    # a finished run made with hydra.output_subdir=null: no .hydra/, and its lock is gone
    "plan.json and run_config.yaml": lambda run: [
        write(run / "plan.json", b'{"batch_size": 2}\n'),
        write(run / "run_config.yaml", b"seed: 1\n"),
    ],
}


@pytest.mark.parametrize("where", ["inside", "linked_in"])
@pytest.mark.parametrize("mark", MARKS)
def test_a_run_or_sweep_folder_in_the_corpus_is_left_out(
    tmp_path: Path, mark: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A run folder under data.path (``outputs/<date>/<time>``): the next run trained on its
    train.log, results.json and plan.json, and a resume was refused for its checkpoint (not
    UTF-8 text). Told by what lmlab or Hydra wrote there, also through a link to it; said in
    one line naming it; the cache key and the rows are those of the corpus without it."""
    corpus = tmp_path / "corpus"
    write(corpus / "a.py", TEXT.encode())
    write(corpus / "b" / "c.py", TEXT.upper().encode())
    cfg = corpus_cfg(corpus, tmp_path)
    key, docs, rows = fingerprint(cfg), load_documents(cfg), prepare(cfg, row_len=9)
    run = corpus / "outputs" / "run1" if where == "inside" else tmp_path / "elsewhere" / "run1"
    MARKS[mark](run)
    fill_run(run)
    if where == "linked_in":
        (corpus / "outputs").symlink_to(run.parent)
    caplog.set_level(logging.INFO, logger="lmlab.data.folders")
    assert load_documents(cfg) == docs == [("a.py", TEXT), ("b/c.py", TEXT.upper())]
    assert fingerprint(cfg) == key and prepare(cfg, row_len=9) == rows
    said = [r.getMessage() for r in caplog.records if "left out of the corpus" in r.getMessage()]
    assert said == [
        f"data.path={str(corpus)!r}: left out of the corpus 1 folder of lmlab runs and sweeps, "
        "whose logs, records and checkpoints are no text to train on: "
        f"outputs/run1 ({mark})"
    ]


def test_the_folders_this_run_writes_in_are_left_out_before_it_writes(tmp_path: Path) -> None:
    """The run's own folder and its sweep's hold no mark yet when the corpus is first read
    (a DDP rank that takes no lock, a sweep's checks); they are named by the run
    (``data.run_folders``) and left out by their real paths, so that the corpus a resume reads
    is the one the run started on. Many folders are named four, then a count; the files left
    are read in the same order."""
    corpus = tmp_path / "corpus"
    for name in ("a.py", "z.py", "outputs.py"):
        write(corpus / name, TEXT.encode())
    own, sweep = corpus / "outputs" / "now", corpus / "multirun" / "s"
    own.mkdir(parents=True)
    cfg = corpus_cfg(corpus, tmp_path, run_folders=(str(own), str(sweep)))
    docs = load_documents(cfg)
    names = [name for name, _ in docs]
    assert names == ["a.py", "outputs.py", "z.py"]
    key, digest = fingerprint(cfg), text_digest(docs)
    fill_run(own)
    for job in range(3):  # the sweep's jobs, their .hydra/ held until their checks pass
        fill_run(sweep / str(job))
    for old in ("x", "y", "z"):
        MARKS[".hydra/"](corpus / "outputs" / old)
        fill_run(corpus / "outputs" / old)
    with pytest.MonkeyPatch.context() as patch:
        said: list[str] = []
        patch.setattr("lmlab.data.folders.log.log", lambda level, line: said.append(line))
        assert text_files(cfg) == [corpus / name for name in names]
    assert said[0].endswith(
        "are no text to train on: multirun/s (this run writes there), outputs/now (this run "
        "writes there), outputs/x (.hydra/), outputs/y (.hydra/) and 1 more"
    )
    assert said[0].startswith(f"data.path={str(corpus)!r}: left out of the corpus 5 folders")
    assert fingerprint(cfg) == key and text_digest(load_documents(cfg)) == digest
    linked = tmp_path / "alias"
    linked.symlink_to(corpus)  # the run's folder named through a link: its real path counts
    named = (str(linked / "outputs" / "now"), str(linked / "multirun" / "s"))
    assert load_documents(corpus_cfg(corpus, tmp_path, run_folders=named)) == docs


def test_a_corpus_that_is_this_runs_folder_is_refused(tmp_path: Path) -> None:
    """``hydra.run.dir=. data.path=.``: the run's own logs and records would be its corpus,
    another one on every resume. Refused, whatever path names it; an earlier run's folder
    named as data.path is read as asked (only the run folders below it are left out), and so
    is a corpus folder inside this run's."""
    run = tmp_path / "run"
    write(run / "notes.txt", TEXT.encode())
    for named in (run, tmp_path / "." / "run" / ".." / "run"):
        cfg = corpus_cfg(named, tmp_path, run_folders=(str(run),))
        with pytest.raises(ConfigError, match=r"^data.path='.*run' is the folder this run wri"):
            text_files(cfg)
    MARKS[".hydra/"](run)
    write(run / "results.json", b'{"status": "completed"}\n')
    MARKS[".hydra/"](run / "nested")
    write(run / "nested" / "train.log", b"log\n")
    asked = corpus_cfg(run, tmp_path)
    assert [name for name, _ in load_documents(asked)] == ["notes.txt", "results.json"]
    write(run / "corpus" / "a.py", TEXT.encode())
    inside = corpus_cfg(run / "corpus", tmp_path, run_folders=(str(run),))
    assert load_documents(inside) == [("a.py", TEXT)]


def test_check_run_names_the_run_and_sweep_folders(tmp_path: Path) -> None:
    """A run's checks fill ``data.run_folders`` from its paths: its output directory, and a
    multirun's sweep folder, absolute; a run folder under data.path is left out from there."""
    corpus = tmp_path / "corpus"
    write(corpus / "a.py", TEXT.encode())
    fill_run(corpus / "outputs" / "run1")
    overrides = ["data=text", f"data.path={corpus}", "+debug=smoke"]
    cfg = compose_train(overrides, corpus / "outputs" / "run1", tmp_path / "cache")
    checked = check_run(cfg, machine=False)
    assert checked.data_cfg.run_folders == (str(corpus / "outputs" / "run1"),)
    assert [name for name, _ in load_documents(checked.data_cfg)] == ["a.py"]
    sweep = [*overrides, "hydra.mode=MULTIRUN", f"hydra.sweep.dir={corpus / 'multirun'}"]
    try:
        cfg = compose_train(sweep, corpus / "multirun" / "0", tmp_path / "cache")
        folders = check_run(cfg, machine=False).data_cfg.run_folders
    finally:  # no later test runs as this sweep's job
        compose_train(overrides)
    assert folders == (str(corpus / "multirun" / "0"), str(corpus / "multirun"))
