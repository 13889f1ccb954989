"""A corpus's own validation split (``data.val_split`` of a dataset, ``data.val_path`` of a
text corpus), read instead of holding ``data.val_fraction`` out of the training split."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pytest
from test_data import text_cfg, write

from lmlab.config import BudgetKind, DataConfig, ParamCount, Source, TokenizerKind
from lmlab.data.packing import prepare, tokenizer_entry
from lmlab.data.sources import ROW_NAMES, load_documents
from lmlab.data.splits import split_documents
from lmlab.errors import ConfigError
from lmlab.train.batch import GlobalBatch
from lmlab.train.budget import Budget
from lmlab.train.compose import compose_train
from lmlab.train.plan import RunPlan, check_resumable
from lmlab.train.preflight import check_run

TRAIN = [f"training story {i}: " + "the cat sat on the mat. " * 8 for i in range(30)]
VALIDATION = [f"validation story {i}: " + "a dog ran in the park. " * 8 for i in range(6)]


def jsonl(path: Path, texts: list[str]) -> Path:
    return write(path, "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())


def hf_cfg(name: Path, tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(
        source=Source.hf,
        name=str(name),
        cache_dir=str(tmp_path / "c"),
        tokenizer=TokenizerKind.char,
        **kw,
    )


def meta(blocks: Path) -> dict:
    return json.loads((blocks / "meta.json").read_text())


def utf8(texts: list[str]) -> int:
    return sum(len(t.encode()) for t in texts)


@pytest.mark.parametrize("saved", [False, True])
def test_a_datasets_own_validation_split_is_validated_on_and_nothing_held_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_offline: None, saved: bool
) -> None:
    """``data.val_split=validation`` of a folder of ``train.jsonl`` and ``validation.jsonl``
    (or a saved DatasetDict): training reads the whole training split, validation the
    validation split's text and nothing of the training split's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    datasets.disable_progress_bars()
    folder = tmp_path / "ds"
    if saved:
        splits = {"train": TRAIN, "validation": VALIDATION}
        datasets.DatasetDict(
            {name: datasets.Dataset.from_dict({"text": texts}) for name, texts in splits.items()}
        ).save_to_disk(str(folder))
    else:
        jsonl(folder / "train.jsonl", TRAIN)
        jsonl(folder / "validation.jsonl", VALIDATION)
    own = meta(prepare(hf_cfg(folder, tmp_path, val_split="validation"), row_len=9))
    assert own["train"]["bytes"] == utf8(TRAIN) and own["val"]["bytes"] == utf8(VALIDATION)
    held = meta(prepare(hf_cfg(folder, tmp_path), row_len=9))  # null: held out of train
    assert held["train"]["bytes"] + held["val"]["bytes"] == utf8(TRAIN)
    assert held["text_sha256"] != own["text_sha256"]


def test_each_split_is_in_the_data_caches_key(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    jsonl(folder / "train.jsonl", TRAIN)
    jsonl(folder / "validation.jsonl", VALIDATION)
    jsonl(folder / "test.jsonl", VALIDATION[:2])
    keys = {
        tokenizer_entry(hf_cfg(folder, tmp_path, val_split=split), tmp_path, None)
        for split in (None, "validation", "test")
    }
    assert len(keys) == 3


def test_a_split_the_dataset_lacks_is_refused_before_the_run_naming_its_splits(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ds"
    jsonl(folder / "train.jsonl", TRAIN)
    jsonl(folder / "validation.jsonl", VALIDATION)
    base = ["data=hf", f"data.name={folder}", "+debug=smoke"]
    with pytest.raises(
        ConfigError,
        match=r"^data.val_split='valid': 'valid' is not a split of '.*ds' "
        r"\(splits: train, validation\); leave data.val_split out",
    ):
        check_run(compose_train([*base, "data.val_split=valid"], tmp_path / "r", tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"^data.split='training': .* \(splits: train, valid"):
        check_run(compose_train([*base, "data.split=training"], tmp_path / "r", tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"^data.val_split='train' is data.split, the training"):
        check_run(compose_train([*base, "data.val_split=train"], tmp_path / "r", tmp_path / "c"))
    one_file = ["data=hf", f"data.name={folder / 'train.jsonl'}", "data.val_split=validation"]
    with pytest.raises(ConfigError, match=r"'validation' is not a split of .* \(splits: train\)"):
        check_run(compose_train(one_file, tmp_path / "r", tmp_path / "c"))
    # a split expression of datasets names its splits
    sliced = [*base, "data.split='train[:80%]'", "data.val_split='validation[:50%]+train[80%:]'"]
    check_run(compose_train(sliced, tmp_path / "r", tmp_path / "c"))


def test_a_text_corpus_validates_on_its_validation_folder(tmp_path: Path) -> None:
    """``data=text data.val_path=...``: the validation files as they are, the training
    folder whole; a validation folder inside the training one is refused (its files would be
    trained on), as is one that is not there."""
    for i, text in enumerate(TRAIN):
        write(tmp_path / "corpus" / "train" / f"{i}.txt", text.encode())
    for i, text in enumerate(VALIDATION):
        write(tmp_path / "corpus" / "val" / f"{i}.txt", text.encode())
    cfg = text_cfg(
        tmp_path / "corpus" / "train",
        tmp_path,
        val_path=str(tmp_path / "corpus" / "val"),
        tokenizer=TokenizerKind.char,
    )
    own = meta(prepare(cfg, row_len=9))
    assert own["train"]["bytes"] == utf8(TRAIN) and own["val"]["bytes"] == utf8(VALIDATION)
    inside = text_cfg(tmp_path / "corpus", tmp_path, val_path=str(tmp_path / "corpus" / "val"))
    with pytest.raises(ConfigError, match=r"^data.val_path='.*val' holds 6 file\(s\) of data"):
        prepare(inside, row_len=9)
    gone = text_cfg(tmp_path / "corpus" / "train", tmp_path, val_path=str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"^data.val_path='.*gone' does not exist"):
        prepare(gone, row_len=9)


def test_a_validation_field_of_another_source_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^data.val_split='validation' is read only by data=hf"):
        DataConfig(source=Source.text, path="x", val_split="validation")
    with pytest.raises(ConfigError, match=r"^data.val_path='v' is read only by data=text"):
        DataConfig(source=Source.hf, name="x", val_path="v")


def test_a_local_datasets_split_does_not_depend_on_how_its_path_is_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_offline: None
) -> None:
    """A local dataset's rows are named by their row, not by ``data.name``: typed as
    ``./ds/train.jsonl`` and as its absolute path (10 of 200 rows held out each time, no row
    in both), or copied to another folder (another machine), it held out other rows."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    datasets.disable_progress_bars()
    texts = [f"row {i}: " + "words " * (5 + i % 7) for i in range(200)]
    jsonl(tmp_path / "ds" / "train.jsonl", texts)
    jsonl(tmp_path / "copy" / "stories.jsonl", texts)
    monkeypatch.chdir(tmp_path)
    names = ["./ds/train.jsonl", str(tmp_path / "ds" / "train.jsonl"), "copy/stories.jsonl"]
    splits = [split_documents(load_documents(hf_cfg(Path(n), tmp_path)), 0.05) for n in names]
    assert 0 < len(splits[0][1]) < len(texts) and splits[0] == splits[1] == splits[2]


def test_a_resume_of_a_local_dataset_run_named_by_its_path_is_refused_saying_why() -> None:
    """A run on a local data=hf dataset started when its rows were named by ``data.name``
    held out other rows: its resume is refused for that reason, not as a changed corpus; a
    hub dataset's and a text corpus's records (no ``names``) resume as before."""
    batch = GlobalBatch(micro_batch=8, devices=1, accumulation=1, seq_len=64)
    budget = Budget(BudgetKind.steps, 10 * batch.tokens, 10, 0.0, batch.tokens, 0.0, None,
                    ParamCount.active, 1000)  # fmt: skip
    started = RunPlan(batch, "32-true", budget, vocab_size=64, params=1000, active_params=1000)
    corpus = {"train": {"rows": 9, "tokens": 99, "bytes": 99}, "val": {"rows": 1}}
    now = dataclasses.replace(started, corpus={**corpus, "text_sha256": "b", "names": ROW_NAMES})
    old = {**started.as_dict(), "corpus": {**corpus, "text_sha256": "a"}}
    with pytest.raises(ConfigError, match=r"named a local data=hf dataset's rows by data.name"):
        check_resumable(old, now, Path("run"))
    same = {**started.as_dict(), "corpus": now.corpus}
    check_resumable(same, now, Path("run"))
    hub = dataclasses.replace(started, corpus={**corpus, "text_sha256": "a"})
    check_resumable(old, hub, Path("run"))


def test_a_resume_of_a_run_whose_text_lmlab_split_otherwise_is_refused_saying_why() -> None:
    """A run started before validation passed over a document holding more than
    data.val_fraction of the text (2026-12-05) held out other documents of the same text
    (+debug=smoke data.tokenizer=char: 890,531 training bytes then, 949,571 now): its resume
    is refused as lmlab's change, naming init_from, not as a corpus the user changed; the same
    text split the same way resumes, and another text is a changed corpus."""
    batch = GlobalBatch(micro_batch=8, devices=1, accumulation=1, seq_len=64)
    budget = Budget(BudgetKind.steps, 10 * batch.tokens, 10, 0.0, batch.tokens, 0.0, None,
                    ParamCount.active, 1000)  # fmt: skip
    started = RunPlan(batch, "32-true", budget, vocab_size=64, params=1000, active_params=1000)

    def corpus(train: int, val: int, digest: str = "b0ed") -> dict:
        split = {"train": {"rows": train // 257, "tokens": train, "bytes": train}}
        return {
            **split,
            "val": {"rows": val // 257, "tokens": val, "bytes": val},
            "text_sha256": digest,
        }

    now = dataclasses.replace(started, corpus=corpus(949_571, 50_421))
    old = {**started.as_dict(), "corpus": corpus(890_531, 109_461)}
    with pytest.raises(ConfigError, match=r"the lmlab that started it split its corpus") as why:
        check_resumable(old, now, Path("run"))
    assert "890,531 training and 109,461 validation bytes then, 949,571 and 50,421 now" in str(
        why.value
    )
    assert "init_from=" in str(why.value)
    check_resumable({**started.as_dict(), "corpus": now.corpus}, now, Path("run"))
    other = {**started.as_dict(), "corpus": corpus(890_531, 109_461, "a1c2")}
    with pytest.raises(ConfigError, match=r"its corpus changed since it started"):
        check_resumable(other, now, Path("run"))
