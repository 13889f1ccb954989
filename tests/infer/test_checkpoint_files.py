"""A file given as a checkpoint that no ``torch.save`` wrote (empty, JSON, other) is named for
what it is, not met with the reader's advice to save it again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.errors import ConfigError
from lmlab.infer.checkpoint import read_checkpoint

JSON = "is not a torch checkpoint (it starts like JSON text)"


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"", "is empty (0 bytes)"),
        (
            b'\n  {"global_step": 3, "metrics": {}}\n',
            JSON,
        ),
        (b"[1, 2]", JSON),
        (b"step,loss\n1,2.5\n", "is not a torch checkpoint (a zip archive is expected)"),
    ],
)
def test_a_file_torch_did_not_write_is_named_for_what_it_is(
    content: bytes, what: str, tmp_path: Path
) -> None:
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        read_checkpoint(path)
    assert str(refused.value) == f"checkpoint {path} {what}"


def test_a_torch_checkpoint_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    torch.save({"global_step": 3, "w": torch.ones(2)}, path)
    assert read_checkpoint(path)["global_step"] == 3


@pytest.mark.parametrize("payload", [torch.ones(3), [1, 2]], ids=["Tensor", "list"])
def test_a_torch_file_that_holds_no_dict_is_named_for_what_it_holds(
    payload: object, tmp_path: Path
) -> None:
    path = tmp_path / "x.ckpt"
    torch.save(payload, path)
    with pytest.raises(ConfigError) as refused:
        read_checkpoint(path)
    assert str(refused.value) == (
        f"checkpoint {path} is not an lmlab checkpoint: it holds a {type(payload).__name__}, "
        "where a checkpoint is a dict (model_config, state_dict, ...)"
    )


@pytest.mark.parametrize("key", ["init_from", "ckpt_path"])
def test_training_from_a_saved_tensor_is_one_line(
    key: str, tmp_path: Path, run_command, capsys
) -> None:
    """``torch.save(tensor)`` named as ``init_from`` or ``ckpt_path`` ended in a traceback
    (``Tensor.__contains__ only supports Tensor or scalar``, ``'Tensor' object has no
    attribute 'get'``)."""
    path = tmp_path / "tensor.ckpt"
    torch.save(torch.ones(3), path)
    argv = ["+debug=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", f"{key}={path}"]
    argv += ["data.tokenizer=checkpoint"] if key == "init_from" else []
    assert run_command("train", *argv) == 2
    err = capsys.readouterr().err
    assert f"error: checkpoint {path} is not an lmlab checkpoint: it holds a Tensor" in err, err
    assert "Traceback" not in err


def test_the_generate_command_says_the_checkpoint_is_empty(
    tmp_path: Path, run_command, capsys
) -> None:
    path = tmp_path / "empty.ckpt"
    path.touch()
    assert run_command("generate", f"ckpt={path}", "prompt=x") == 2
    assert capsys.readouterr().err == f"error: checkpoint {path} is empty (0 bytes)\n"


def test_consolidate_says_a_truncated_file_is_unreadable(tmp_path: Path) -> None:
    """``consolidate`` told a truncated single file that it needed no consolidation, as it
    tells a whole one: it is read first, and named unreadable as the other tools name it."""
    from lmlab.cli.consolidate import main as consolidate_main

    whole = tmp_path / "whole.ckpt"
    torch.save({"global_step": 3, "w": torch.ones(4096)}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ConfigError, match=rf"^checkpoint {cut} is unreadable \(truncated"):
        consolidate_main([f"ckpt={cut}"])
    with pytest.raises(ConfigError, match="not a sharded checkpoint folder .* needs no consol"):
        consolidate_main([f"ckpt={whole}"])


def test_two_consolidations_into_one_out_keep_the_first_and_refuse_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``consolidate`` run twice at once into one ``out`` (two steps' folders, one name): both
    passed the check before their work, then the second's rename replaced the first's file in
    silence and both said they wrote it. Now the second is refused in one line, as ``convert``
    refuses it, the first's file is whole, and no temporary file is left."""
    import lmlab.infer.checkpoint as checkpoint
    from lmlab.cli.consolidate import main as consolidate_main

    sharded = tmp_path / "step000200.ckpt"
    sharded.mkdir()
    (sharded / checkpoint.SHARDED_META).touch()
    out = tmp_path / "final.ckpt"

    def meanwhile(path: Path) -> dict:
        torch.save({"global_step": 100}, out)  # the other consolidation finished meanwhile
        return {"global_step": 200, "state_dict": {"w": torch.ones(2)}}

    monkeypatch.setattr(checkpoint, "consolidate", meanwhile)
    with pytest.raises(ConfigError) as refused:
        consolidate_main([f"ckpt={sharded}", f"out={out}"])
    assert str(refused.value) == (
        f"out={out} is now a file: another command wrote it while this one ran (nothing is "
        "overwritten; this one's output is not kept)"
    )
    assert torch.load(out)["global_step"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.ckpt", "step000200.ckpt"]


def test_a_folder_given_as_a_checkpoint_is_named_for_what_it_holds(tmp_path: Path) -> None:
    """A run directory's refusal suggested ``checkpoints/last.ckpt`` where the run had saved
    none, or only step checkpoints; a sweep's folder was "a folder but no sharded checkpoint",
    and so was a run killed before its first checkpoint (no ``checkpoints/`` yet). Each now
    says what is there, and a run without a checkpoint how to get one."""
    from lmlab.infer.checkpoint import no_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.yaml").write_text("seed: 1\n")  # written as training starts
    none_saved = (
        f"ckpt={run} is a run directory that saved no checkpoint (its run stopped before the "
        "first, or they were removed): train it (resume=auto in that directory starts it "
        "again), or give another checkpoint"
    )
    assert str(no_checkpoint("ckpt", run)) == none_saved
    (run / "checkpoints").mkdir()
    assert str(no_checkpoint("ckpt", run)) == none_saved
    (run / "checkpoints" / "step=4.ckpt").write_bytes(b"")
    assert str(no_checkpoint("ckpt", run)).endswith(f"e.g. ckpt={run}/checkpoints/step=4.ckpt")
    for name in ("step=8.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"")
    assert str(no_checkpoint("ckpt", run)).endswith(
        f"e.g. ckpt={run}/checkpoints/last.ckpt (3 there: last.ckpt, step=4.ckpt, step=8.ckpt)"
    )
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert str(no_checkpoint("ckpt", sweep)).startswith(
        f"ckpt={sweep} is a sweep's folder: give a checkpoint of one of its jobs, e.g. "
        f"ckpt={sweep}/<job>/checkpoints/last.ckpt"
    )
    # runs gathered in a folder by hand: "a folder but no sharded checkpoint" named neither
    (tmp_path / "runs" / "swiglu" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "gelu" / "checkpoints").mkdir(parents=True)
    assert str(no_checkpoint("ckpt", tmp_path / "runs")) == (
        f"ckpt={tmp_path}/runs is a folder of 2 run(s) (gelu, swiglu): give a checkpoint of "
        f"one, e.g. ckpt={tmp_path}/runs/gelu/checkpoints/last.ckpt (`lmlab compare "
        f"{tmp_path}/runs` ranks them)"
    )


def test_a_runs_checkpoints_folder_given_as_a_checkpoint_names_them(tmp_path: Path) -> None:
    """``ckpt=<run>/checkpoints``, one level short of a checkpoint, was "a folder but no
    sharded checkpoint": its checkpoints are named, as a run directory's are."""
    from lmlab.infer.checkpoint import no_checkpoint

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    assert str(no_checkpoint("ckpt", folder)).startswith(
        f"ckpt={folder} is a run's checkpoints folder that saved no checkpoint (its run "
    )
    for name in ("step000002.ckpt", "last.ckpt"):
        (folder / name).write_bytes(b"")
    assert str(no_checkpoint("ckpt", folder)) == (
        f"ckpt={folder} is a run's checkpoints folder: give one of its checkpoints, e.g. "
        f"ckpt={folder}/last.ckpt (2 there: last.ckpt, step000002.ckpt)"
    )


def test_a_dangling_link_given_as_a_checkpoint_names_its_target(
    tmp_path: Path, run_command, capsys
) -> None:
    """A run's ``last.ckpt`` whose step file was removed was "not a checkpoint file (a
    dangling link or a device?)": the link and the missing target are named."""
    link = tmp_path / "last.ckpt"
    link.symlink_to("step000010.ckpt")
    assert run_command("generate", f"ckpt={link}", "prompt=x") == 2
    assert capsys.readouterr().err == (
        f"error: ckpt={link} is a link to step000010.ckpt, which does not exist (removed or "
        "moved): give a checkpoint that is there\n"
    )


@pytest.mark.parametrize(
    ("command", "key", "extra"),
    [
        ("generate", "ckpt", ["prompt=x"]),
        ("train", "init_from", ["+debug=smoke", "logger=none", "data.tokenizer=checkpoint"]),
    ],
)
def test_a_hugging_face_folder_given_as_a_checkpoint_names_from_hf(
    command: str, key: str, extra: list[str], tmp_path: Path, run_command, capsys
) -> None:
    """A save_pretrained folder named where a checkpoint belongs was "a folder but no sharded
    checkpoint (no meta.pt inside)": the conversion that makes it one is named instead."""
    folder = tmp_path / "gpt2-hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    argv = [*extra, f"{key}={folder}"]
    argv += [f"hydra.run.dir={tmp_path / 'run'}"] if command == "train" else []
    assert run_command(command, *argv) == 2
    assert capsys.readouterr().err == (
        f"error: {key}={folder} is a Hugging Face model folder, not an lmlab checkpoint: "
        f"convert it with `lmlab convert from_hf={folder} out=<file>.ckpt`, then give "
        f"{key}=<file>.ckpt\n"
    )
