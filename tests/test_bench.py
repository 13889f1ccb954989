"""The benchmark harness (bench/): the Shakespeare config, a fair plain-loop baseline, the
report. Behaviour only: speed itself is measured by ``make bench``, never asserted here."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.config import CONF_DIR
from lmlab.train.compose import compose_train
from lmlab.train.schedule import warmup_cosine_factor

sys.path.insert(0, str(CONF_DIR.parent))  # the repository root: bench/ is not installed
from bench.harness import BENCH_OVERRIDES, StepLog, run_lmlab  # noqa: E402
from bench.plain_loop import plain_fit  # noqa: E402
from bench.report import (  # noqa: E402
    NOT_RUN,
    CaseResult,
    Stat,
    markdown_table,
    render,
    render_section,
    sections_of,
    summary_line,
)
from bench.run import select  # noqa: E402

REPO = CONF_DIR.parent  # the repository root

# GPT-2's blocks with nanoGPT's exact GELU (nn.GELU()), not GPT-2's tanh form
NANOGPT = {
    "norm_placement": "pre",
    "norm": "layernorm",
    "activation": "gelu_exact",
    "positional": "learned",
    "tie_embeddings": True,
}
LLAMA = {"norm": "rmsnorm", "activation": "swiglu", "positional": "rope", "tie_embeddings": False}


def test_shakespeare_char_config_is_nanogpts_cpu_run() -> None:
    cfg = compose_train(["+experiment=shakespeare_char_cpu"])
    model = OmegaConf.to_container(cfg.model)
    assert {k: model[k] for k in NANOGPT} == NANOGPT
    assert (model["d_model"], model["n_layers"], model["n_heads"]) == (128, 4, 4)
    assert (model["max_seq_len"], model["dropout"], model["bias"]) == (64, 0.0, False)
    data = cfg.data
    assert (data.source, data.tokenizer, data.batch_size, data.val_fraction) == (
        "shakespeare",
        "char",
        12,
        0.1,
    )
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval) == (2000, 250)
    # nanoGPT's 20-batch estimates while training; the whole held-out split at the end
    assert (cfg.trainer.limit_val_batches, cfg.final_val_batches) == (20, 1.0)
    assert cfg.trainer.gradient_clip_val == 1.0
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.optim.weight_decay) == (1e-3, [0.9, 0.99], 0.1)
    assert cfg.scheduler.warmup_steps == 100
    end = warmup_cosine_factor(2000, 100, 2000, cfg.scheduler.min_lr_ratio)
    assert cfg.optim.lr * end == pytest.approx(1e-4)  # nanoGPT's min_lr


def test_shakespeare_takes_llama_on_top() -> None:
    cfg = compose_train(["+experiment=[shakespeare_char_cpu,llama]"])
    model = OmegaConf.to_container(cfg.model)
    assert {k: model[k] for k in LLAMA} == LLAMA
    assert (model["max_seq_len"], model["d_model"], cfg.data.tokenizer) == (64, 128, "char")
    assert cfg.data.source == "shakespeare" and cfg.data.path is None


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        # bf16 autocast, on a model small enough for CPUs without native bf16; no Throughput
        # callback, whose first bf16 peak measurement takes seconds on such CPUs
        ["trainer.precision=bf16-mixed", "model.d_model=32", "model.n_layers=1"]
        + ["~callbacks.throughput"],
    ],
    ids=["fp32", "bf16-mixed"],
)
def test_plain_loop_trains_exactly_like_lmlab(
    tmp_path: Path, cache_dir: Path, overrides: list[str]
) -> None:
    """Same init, batches, loss, clipping, AdamW groups and schedule: the losses agree step by
    step, so the overhead benchmark compares like with like."""
    steps = ["+debug=smoke", "trainer.max_steps=3", *BENCH_OVERRIDES, *overrides]
    lmlab, results = run_lmlab(compose_train(steps, tmp_path / "lmlab", cache_dir))
    plain = plain_fit(compose_train(steps, tmp_path / "plain", cache_dir))
    assert results["status"] == "completed" and len(lmlab.losses) == 3
    assert plain.losses == pytest.approx(lmlab.losses, rel=1e-6, abs=0)
    assert lmlab.losses[-1] < lmlab.losses[0]  # it trains, not just repeats step 0
    assert plain.tokens_per_step == lmlab.tokens_per_step
    assert plain.flops_per_token == lmlab.flops_per_token > 0
    assert len(lmlab.starts) == len(lmlab.cpu_starts) == 3


def test_step_times_leave_out_the_warm_up() -> None:
    log = StepLog([0.0, 5.0, 6.0, 7.0, 8.5], [0.0] * 5, [1.0] * 5, 100, 1.0)
    assert log.step_seconds(warmup=2) == [1.0, 1.5]
    assert log.median_step(warmup=2) == 1.25
    assert log.tokens_per_second(warmup=2) == 80.0


def test_report_shows_median_min_max() -> None:
    result = CaseResult(
        "train",
        "gpt_tiny fp32",
        [Stat("tokens/s", "tok/s", [6800.0, 6600.0, 6745.0]), Stat("MFU", "%", [0.43, 0.4, 0.5])],
        note="30 steps",
    )
    line = summary_line(result)
    assert line == "train gpt_tiny fp32: 6,745 tok/s (min 6,600 max 6,800) MFU 43.0%"
    table = markdown_table([result])
    assert "| gpt_tiny fp32 | tokens/s (tok/s) | 6,745 | 6,600 | 6,800 | 3 |" in table
    assert "| gpt_tiny fp32 | MFU (%) | 43.0% | 40.0% | 50.0% | 3 |" in table
    assert "- gpt_tiny fp32: 30 steps" in table
    share = CaseResult("profile", "gpt_tiny", [Stat("Lightning's own", "%", [0.01, 0.02])])
    assert summary_line(share) == "profile gpt_tiny: Lightning's own 1.5% (min 1.0% max 2.0%)"
    skipped = CaseResult("generate", "gpt_mini, KV cache", skipped="KV cache not available")
    assert summary_line(skipped).endswith("skipped: KV cache not available")


def test_a_partial_run_replaces_only_its_own_sections() -> None:
    def section(group: str, value: float) -> str:
        stats = [Stat("wall", "s", [value])]
        return render_section(group, [CaseResult(group, "x", stats)], "measured", "")

    before = render(["- old header"], {"train": section("train", 1.0), "data": section("data", 2)})
    after = render(["- new header"], {"data": section("data", 3.0)}, previous=before)
    assert "- new header" in after and "- old header" not in after
    assert "| x | wall (s) | 1.00 |" in after  # train kept
    assert "| x | wall (s) | 3.00 |" in after and "2.00" not in after  # data replaced
    assert after.index("## Training") < after.index("## Data")


def test_hand_written_lines_outside_the_sections_are_kept() -> None:
    """A note typed between the header and the sections (or after them) was deleted by the
    next run, which rewrites the header: it is kept, after the new header, run after run;
    the old header's own lines are not."""
    stats = [Stat("wall", "s", [1.0])]
    data = render_section("data", [CaseResult("data", "x", stats)], "measured", "")
    before = render(["- old header", "- date: then"], {"data": data})
    i = before.index("<!-- section:data")
    typed = before[:i] + "My note: the old box.\n- a bullet of mine\n\n" + before[i:] + "\nEnd.\n"
    after = render(["- new header"], {"data": data}, previous=typed)
    assert "- old header" not in after and "- date: then" not in after
    assert after.index("- new header") < after.index("My note: the old box.\n- a bullet of mine")
    assert after.index("End.") < after.index("<!-- section:data")
    again = render(["- newer header"], {}, previous=after)
    assert again.count("My note: the old box.") == 1 and again.count("End.") == 1
    assert again.replace("- newer header", "- new header") == after


# fake cases: key -> (group, row name, wall time)
SUITE = {"a": ("train", "alpha", 1.0), "b": ("train", "beta", 2.0), "c": ("data", "gamma", 3.0)}
TENFOLD = {key: (group, name, 10 * value) for key, (group, name, value) in SUITE.items()}


def fake_cases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, values: dict) -> list[str]:
    """bench.run's CASES replaced by ``values``' cases (group, row name, wall time), each of
    which returns its one row at once; the list returned records the cases run, in order."""
    import bench.run as bench_run
    from bench.cases import Case

    ran: list[str] = []

    def case(key: str, group: str, name: str, value: float) -> Case:
        def run(s) -> list[CaseResult]:
            ran.append(key)
            return [CaseResult(group, name, [Stat("wall", "s", [value])])]

        return Case(run, group, default=group != "gpu")

    cases = {key: case(key, *spec) for key, spec in values.items()}
    monkeypatch.setattr(bench_run, "CASES", cases)
    monkeypatch.setattr(bench_run, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)  # main() moves to ROOT; the test's directory comes back
    return ran


def test_a_run_of_some_of_a_groups_cases_keeps_its_other_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``--only <case>`` rewrites that case's rows, not its group's: the others stay, each
    saying which run measured it, and so does a hand-written note; other groups are as they were."""
    from bench.run import main

    out = tmp_path / "B.md"
    fake_cases(monkeypatch, tmp_path, SUITE)
    assert main(["--out", str(out)]) == 0
    by_hand = "- by hand: beta ran on a quiet machine"
    out.write_text(out.read_text().replace("\n<!-- cases:", f"\n{by_hand}\n<!-- cases:", 1))
    ran = fake_cases(monkeypatch, tmp_path, TENFOLD)
    assert main(["--only", "a", "--out", str(out)]) == 0 and ran == ["a"]
    text = out.read_text()
    train = sections_of(text)["train"]
    assert "| alpha | wall (s) | 10.00 |" in train and "| alpha | wall (s) | 1.00 |" not in train
    assert "| beta | wall (s) | 2.00 |" in train  # kept, in its place
    assert train.index("| alpha |") < train.index("| beta |")
    assert re.search(
        r"\n- beta: .*; from an earlier run: measured \d{4}-\d\d-\d\d .* at commit ", train
    )
    assert "\nRows from this run: alpha; " in train and by_hand in train
    assert "| gamma | wall (s) | 3.00 |" in text  # data: not measured, kept
    assert "- sections this run measured: train (alpha only)" in text
    assert "kept 1 hand-written line(s) in section train" in capsys.readouterr().out
    # the whole group again: every row is this run's, the hand-written note still kept
    assert main(["--only", "train", "--out", str(out)]) == 0
    train = sections_of(out.read_text())["train"]
    assert "| beta | wall (s) | 20.00 |" in train and "earlier run" not in train
    assert "Rows from this run" not in train and by_hand in train


def test_a_cases_earlier_rows_are_replaced_by_it_under_another_name() -> None:
    """Rows are named by what a case measured (its shapes, which --quick shrinks): the section
    records which case wrote which rows, so a later run of that case leaves none of them."""

    def row(name: str, case: str) -> CaseResult:
        return CaseResult("gpu", name, [Stat("wall", "s", [1.0])], case=case)

    full = [row("gpt_small 12x1024", "gpu_a"), row("fsdp", "gpu_b")]
    before = render_section("gpu", full, "Measured 2026-12-01 at commit abc.", "")
    after = render_section(
        "gpu", [row("gpt_tiny 2x64", "gpu_a")], "Measured now.", "", before, False
    )
    assert "| gpt_tiny 2x64 |" in after and "gpt_small" not in after
    assert (
        "| fsdp |" in after
        and "- fsdp: from an earlier run: measured 2026-12-01 at commit abc" in after
    )


def test_cases_that_budget_left_out_keep_their_earlier_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``--budget``: a case not run measured nothing, so its rows stay as an earlier run left
    them; a group none of whose cases ran keeps its section, and a run of none the file."""
    from bench.cases import Settings
    from bench.run import main

    out = tmp_path / "B.md"
    fake_cases(monkeypatch, tmp_path, SUITE)
    assert main(["--out", str(out)]) == 0
    before = out.read_text()
    monkeypatch.setattr(Settings, "time_left", lambda self: False)
    assert main(["--budget", "60", "--out", str(out)]) == 0
    assert out.read_text() == before and "left as it was" in capsys.readouterr().out
    starts = iter([True])  # time for the first case only
    monkeypatch.setattr(Settings, "time_left", lambda self: next(starts, False))
    ran = fake_cases(monkeypatch, tmp_path, TENFOLD)
    assert main(["--budget", "60", "--out", str(out)]) == 0 and ran == ["a"]
    text = out.read_text()
    assert sections_of(text)["data"] == sections_of(before)["data"]
    train = sections_of(text)["train"]
    assert "| alpha | wall (s) | 10.00 |" in train and "| beta | wall (s) | 2.00 |" in train
    assert "not run" not in train  # beta's earlier numbers stand for it
    # a case left out that has no earlier rows says so
    section = render_section(
        "gpu", [CaseResult("gpu", "gpu_x", skipped=NOT_RUN, case="gpu_x")], "m", ""
    )
    assert "| gpu_x | skipped: not run: --budget spent |" in section
    assert (
        render_section("gpu", [CaseResult("gpu", "gpu_x", skipped=NOT_RUN)], "m", "", section)
        == section
    )


def test_the_report_is_written_after_each_case_so_a_kill_keeps_what_was_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device call's time limit kills the bench: the report was written only after the
    last case, so every number measured before was lost. It is now written (atomically)
    after each case, the cases still to run said as not yet run, keeping their earlier rows.
    A SIGTERM (``timeout``'s, which Lightning turns into ``SIGTERMException``) ends the case
    that ran as failed and the run, with its report written."""
    import bench.run as bench_run
    from bench.run import main
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    out = tmp_path / "B.md"
    fake_cases(monkeypatch, tmp_path, SUITE)
    assert main(["--out", str(out)]) == 0
    ran = fake_cases(monkeypatch, tmp_path, TENFOLD)
    beta = bench_run.CASES["b"]

    def killed(s) -> list[CaseResult]:
        raise KeyboardInterrupt  # as a kill: nothing after this line of the process runs

    monkeypatch.setitem(bench_run.CASES, "b", dataclasses.replace(beta, fn=killed))
    with pytest.raises(KeyboardInterrupt):
        main(["--out", str(out)])
    assert ran == ["a"] and not list(tmp_path.glob(".B.md.tmp"))
    train = sections_of(out.read_text())["train"]
    assert "| alpha | wall (s) | 10.00 |" in train and "| beta | wall (s) | 2.00 |" in train
    assert "written after case a while the run went on" in out.read_text()

    def terminated(s) -> list[CaseResult]:
        raise SIGTERMException

    ran.clear()
    monkeypatch.setitem(bench_run.CASES, "b", dataclasses.replace(beta, fn=terminated))
    assert main(["--out", str(out)]) == 1 and ran == ["a"]  # c was not started
    text = out.read_text()
    assert "| b | skipped: failed: stopped by SIGTERM (a time limit) |" in text
    assert "| gamma | wall (s) | 3.00 |" in text and "while the run went on" not in text


def test_a_case_failing_with_a_long_message_keeps_the_table_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the H200 FlexAttention's compile failed with Inductor's ten-line message, blank
    lines and a ``|`` in it: the row ran over lines and ended the table, so the cases after it
    were no longer rows. The row now holds the error's type and first line, without ``|``."""
    import bench.run as bench_run
    from bench.run import main

    out = tmp_path / "B.md"
    fake_cases(monkeypatch, tmp_path, SUITE)
    alpha = bench_run.CASES["a"]

    def fails(s) -> list[CaseResult]:
        raise RuntimeError("No valid triton configs. a | b\n\nSet TORCHDYNAMO_VERBOSE=1\n")

    monkeypatch.setitem(bench_run.CASES, "a", dataclasses.replace(alpha, fn=fails))
    assert main(["--out", str(out)]) == 1
    rows = [line for line in sections_of(out.read_text())["train"].splitlines() if "|" in line]
    assert "| a | skipped: failed: RuntimeError: No valid triton configs. a / b | | | | |" in rows
    assert "| beta | wall (s) | 2.00 | 2.00 | 2.00 | 1 |" in rows  # the table went on after it
    assert "TORCHDYNAMO" not in out.read_text()


def test_gpu_cases_are_refused_without_cuda_unless_quick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Without CUDA the GPU cases would run their full shapes on the CPU and report a CPU's
    numbers as the GPU's; ``--quick`` (a smoke check of their code) still runs them."""
    from bench.run import main

    ran = fake_cases(monkeypatch, tmp_path, {"gpu_x": ("gpu", "x", 1.0), **SUITE})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "B.md"
    for only in ("gpu", "gpu_x", "c,gpu_x"):
        assert main(["--only", only, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error: --only {only}: the gpu cases need CUDA" in err and "--quick" in err
    assert ran == [] and not out.exists()
    assert main(["--quick", "--only", "gpu", "--out", str(out)]) == 0 and ran == ["gpu_x"]


def test_empty_or_unknown_selections_and_budgets_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Exit 2 and one line naming the option, its value and what is allowed, like --repeats 0:
    an empty --only is no selection (not the default set), --budget 0 is not 'no budget'."""
    from bench.run import main

    ran = fake_cases(monkeypatch, tmp_path, {"a": SUITE["a"]})
    for argv, message in [
        (["--only", ""], "error: --only '': names no case or group; choose from the groups train"),
        (["--only", ","], "error: --only ',': names no case or group"),
        (
            ["--only", "nosuch"],
            "error: --only nosuch: unknown case or group nosuch; choose from "
            "the groups train or the cases a",
        ),
        (["--budget", "0"], "error: --budget 0: allowed a number of seconds > 0"),
        (["--budget", "-5"], "error: --budget -5: allowed a number of seconds > 0"),
    ]:
        assert main(["--quick", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert ran == []


def test_bad_arguments_are_refused_before_any_case_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An --out that cannot be written would lose every case's numbers at the end, and a
    --profile that is a file each GPU case's after its timed runs."""
    from bench.run import main

    table = tmp_path / "table.txt"
    table.write_text("")
    for argv, message in [
        (["--out", str(tmp_path / "missing" / "x.md")], "--out "),
        (["--out", str(tmp_path)], "--out "),
        (["--repeats", "0"], "--repeats 0: allowed an int >= 1"),
        (["--threads", "0"], "--threads 0: allowed an int >= 1"),
        (["--profile", str(table)], f"--profile {table}: a folder (made if missing), not a"),
    ]:
        assert main(["--quick", "--only", "startup", *argv]) == 2
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [table]


def test_case_selection() -> None:
    default = select(None)
    assert "shakespeare" not in default and "overhead" in default and "data" in default
    assert select("shakespeare") == ["shakespeare"]
    assert select("overhead") == ["overhead", "overhead_small"]  # a group name
    assert all(n.startswith("train_") for n in select("train"))
    with pytest.raises(ValueError, match="unknown case or group nope; choose from the groups "):
        select("nope")
    for empty in ("", ",", " , "):  # an empty selection is refused, not the default set
        with pytest.raises(ValueError, match="names no case or group"):
            select(empty)


def test_profile_sorts_each_sample_into_one_part_of_the_step() -> None:
    from bench.stack_profile import TRAINER, classify, parse_raw

    loop = "main (src/train.py:40);run (lightning/pytorch/loops/fit_loop.py:216)"
    loop += ";advance (lightning/pytorch/loops/training_epoch_loop.py:150)"
    opt = loop + ";step (torch/optim/optimizer.py:493);step (torch/optim/adamw.py:200)"
    closure = opt + ";closure (lightning/pytorch/loops/optimization/automatic.py:140)"
    raw = "\n".join(
        [
            f"{closure};backward (lightning/core/module.py:1);backward (torch/_tensor.py:581) 50",
            f"{closure};training_step (lmlab/task.py:120);forward (lmlab/model/gpt.py:60) 20",
            # py-spy names a module on sys.path by its file; Lightning's training_step wraps it
            f"{closure};training_step (lightning/pytorch/strategies/strategy.py:391)"
            ";training_step (task.py:173);forward (gpt.py:60) 10",
            f"{closure};training_step (lmlab/task.py:125);log (lightning/core/module.py:400) 4",
            f"{closure};clip_gradients (lightning/x.py:2);clip_grad_norm_ (torch/nn/u.py:3) 2",
            f"{closure};_call_lightning_module_hook (lightning/pytorch/trainer/call.py:170) 3",
            f"{opt};_single_tensor_adamw (torch/optim/adamw.py:400) 8",
            f"{loop};__next__ (torch/utils/data/dataloader.py:700);collate (lmlab/data/c.py:9) 1",
            f"{loop};save_checkpoint (lightning/pytorch/trainer.py:1);save (torch/s.py:1) 3",
            f"{loop};on_train_batch_end (lmlab/train/callbacks/throughput.py:49) 6",
            f"{loop};run (lightning/pytorch/loops/evaluation_loop.py:1);{closure[len(loop) :]} 40",
            "main (src/train.py:40);prepare (lmlab/data/packing.py:90) 900",  # not in the loop
            "not a sample line",
        ]
    )
    assert classify(parse_raw(raw)) == {
        "backward": 50,
        "forward and loss": 30,
        "clipping": 2,
        "AdamW and LR schedule": 8,
        "data": 1,
        "checkpoint saves": 3,
        "validation": 40,
        TRAINER: 4 + 3 + 6,  # self.log, the closure's hooks, a callback
    }


@pytest.mark.e2e  # 16-22 s of make bench-gpu's own health, not lmlab's: `make test-all`
def test_gpu_cases_run_in_quick_mode_on_any_device(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make bench-gpu``'s cases, shrunk (``--quick``: a tiny model, no compile), run on the
    device there is, so the GPU benchmark does not rot between the sessions that have a GPU."""
    from bench.cases import CASES, Settings

    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    s = Settings(work=tmp_path, repeats=1, quick=True, profile=tmp_path / "profiles")
    assert select("gpu") == [n for n in CASES if n.startswith("gpu_")]  # all: none is default
    for name in ("gpu_gpt_small", "gpu_fsdp", "gpu_generate", "gpu_attention", "gpu_cross_entropy"):
        for result in CASES[name].fn(s):
            assert result.group == "gpu" and not result.skipped
            assert all(v > 0 for stat in result.stats for v in stat.values), summary_line(result)
    # a family against GPT at its size: both MFUs, and the points between them
    (t5,) = CASES["gpu_t5_small"].fn(s)
    stats = {stat.name: stat.values for stat in t5.stats}
    (gpt_mfu,) = stats["GPT at its size, MFU"]
    assert stats["MFU below GPT at its size"] == [gpt_mfu - m for m in stats["MFU"]]
    assert "GPT at its size" in t5.note and "its layers in one stack" in t5.note
    # --profile: a table of each first run, lmlab's and the plain loop's
    tables = sorted(p.name for p in (tmp_path / "profiles").iterdir())
    runs = ["gpt_small-0", "gpt_small-plain", "gpt_small_fsdp-0", "t5_small-0", "t5_small-gpt"]
    assert tables == sorted(f"{run}.{ext}" for run in runs for ext in ("json", "txt"))
    table = (tmp_path / "profiles" / "gpt_small-0.txt").read_text()
    assert "2 training steps" in table and "aten::mm" in table  # quick: 2 profiled steps


@pytest.mark.parametrize(
    ("preset", "layers", "knobs"),
    [
        ("t5_small", 12, {"norm": "rmsnorm", "activation": "relu", "positional": "relative"}),
        ("bert_base", 12, {"norm_placement": "post", "positional": "learned", "bias": True}),
    ],
)
def test_gpt_at_a_familys_size_keeps_its_knobs_and_stacks_its_layers(
    tmp_path: Path, preset: str, layers: int, knobs: dict
) -> None:
    """#17's yardstick for BERT and T5 (``bench.gpu_cases.gpt_at_size``): GPT with the family's
    width, heads, feed-forward and knobs, its encoder's and decoder's layers in one stack, at
    the same tokens per step; nothing of the family (segments, a decoder) left over."""
    from bench.cases import Settings
    from bench.gpu_cases import gpt_at_size, model_config

    s = Settings(work=tmp_path)
    family_overrides = [f"model={preset}", "data.batch_size=32", "data.seq_len=512"]
    family, seq = model_config(family_overrides, s)
    gpt, gpt_seq = model_config(gpt_at_size(family_overrides, s), s)
    assert (gpt.family, gpt.n_layers, gpt.type_vocab_size, gpt_seq) == ("gpt", layers, 0, seq)
    same = ("d_model", "n_heads", "head_dim", "ffn_dim", "vocab_size", "tie_embeddings", "init")
    assert all(getattr(gpt, f) == getattr(family, f) for f in same)
    assert all(getattr(gpt, f) == getattr(family, f) == v for f, v in knobs.items())


def test_budget_starts_no_case_once_spent(tmp_path: Path) -> None:
    """``--budget``: cases not started in time are reported as not run, not as failed."""
    from bench.cases import Settings
    from bench.run import run_cases

    s = Settings(work=tmp_path, deadline=0.0)
    (result,) = run_cases(["gpu_attention"], s)
    assert result.skipped == "not run: --budget spent" and not result.stats


def test_quick_run_leaves_benchmarks_md_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--quick`` numbers are a smoke check, not benchmarks: the tracked BENCHMARKS.md is
    rewritten by full runs only, a quick run writes where ``--out`` says."""
    import bench.run as bench_run
    from bench.cases import Case

    case = Case(lambda s: [CaseResult("generate", "fake", skipped="smoke")], "generate")
    monkeypatch.setattr(bench_run, "CASES", {"fake": case})
    monkeypatch.setattr(bench_run, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)  # main() moves to ROOT; the test's directory comes back
    (tmp_path / "BENCHMARKS.md").write_text("measured\n")
    assert bench_run.main(["--quick", "--only", "fake"]) == 0
    assert (tmp_path / "BENCHMARKS.md").read_text() == "measured\n"
    assert bench_run.main(["--quick", "--only", "fake", "--out", str(tmp_path / "q.md")]) == 0
    assert "| fake |" in (tmp_path / "q.md").read_text()
    assert bench_run.main(["--only", "fake"]) == 0  # a full run rewrites it
    assert "| fake |" in (tmp_path / "BENCHMARKS.md").read_text()


def test_profile_case_tools_are_in_the_dev_extras() -> None:
    """The ``profile`` case needs py-spy; without it ``make bench`` skips the case. Read from
    the installed metadata, which ``pip install -e ".[dev]"`` wrote from pyproject.toml
    (tomllib is Python 3.11's; lmlab runs on 3.10)."""
    from importlib.metadata import requires

    dev = [r for r in requires("lmlab") or [] if 'extra == "dev"' in r]
    assert any(r.startswith("py-spy") for r in dev), dev


def test_adamw_case_times_both_implementations_over_the_same_parameters(tmp_path: Path) -> None:
    """``make bench --only adamw`` in quick mode: foreach and fused, one model at a time, each
    row a positive time (no speed is asserted: that is the benchmark's job)."""
    from bench.cases import CASES, Settings
    from bench.cases.ops import ADAMW_MODELS

    results = CASES["adamw"].fn(Settings(work=tmp_path, repeats=1, quick=True))
    assert [r.name for r in results] == [label for label, _, _ in ADAMW_MODELS]
    for result in results:
        names = [stat.name for stat in result.stats]
        assert names == ["AdamW foreach", "AdamW fused", "fused speed-up (foreach / fused)"]
        assert all(v > 0 for stat in result.stats for v in stat.values), summary_line(result)
    assert "817,664 parameters" in results[0].note  # the Tiny Shakespeare model, vocabulary 171


def test_startup_case_times_both_collector_settings(tmp_path: Path) -> None:
    """``make bench --only startup`` in quick mode (a light import): both settings, each row a
    positive time (no speed is asserted)."""
    from bench.cases import CASES, Settings
    from bench.cases.startup import STARTUP_MODES

    results = CASES["startup"].fn(Settings(work=tmp_path, repeats=1, quick=True))
    assert [r.name for r in results] == list(STARTUP_MODES)
    for result in results:
        assert len(result.stats) == 3
        assert all(v > 0 for stat in result.stats for v in stat.values), summary_line(result)


def synchronising(step: int) -> None:
    """What ``torch.cuda.set_sync_debug_mode("warn")`` makes a synchronising call say."""
    import warnings

    warnings.warn(f"called a synchronizing CUDA operation (step {step})", stacklevel=1)


LINE = synchronising.__code__.co_firstlineno + 4  # its warnings.warn line


def test_the_sync_audit_records_where_each_step_synchronised(tmp_path: Path) -> None:
    """``SyncAudit`` (``make bench-gpu``'s record of a GPU run's synchronising calls): the
    calls of each audited step with their sites, apart by whether the step logged; other
    warnings still shown; nothing recorded before the window or after it."""
    import warnings
    from types import SimpleNamespace

    from bench.profiling import SyncAudit, quiet_syncs

    audit = SyncAudit(str(tmp_path / "audit.json"), start=2, steps=3)
    trainer, task = SimpleNamespace(global_step=0), SimpleNamespace(reads_now=False)
    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        for step in range(6):
            trainer.global_step, task.reads_now = step, step == 3  # step 3 logs
            audit.on_train_batch_start(trainer, task, None, step)
            synchronising(step)
            if step in (2, 3):
                synchronising(step)
                warnings.warn("something else", stacklevel=1)
            audit.on_train_batch_end(trainer, task, None, None, step)
        audit.on_train_end(trainer, task)
    assert shown == [  # outside the window, and what is not a synchronisation
        "called a synchronizing CUDA operation (step 0)",
        "called a synchronizing CUDA operation (step 1)",
        "something else",
        "something else",
        "called a synchronizing CUDA operation (step 5)",
    ]
    per_step, sites = quiet_syncs(tmp_path / "audit.json")
    assert per_step == 3 / 2  # steps 2 and 4: two calls, then one; step 3 logged
    # two sites, the most frequent first: each names the call, innermost first, then its caller
    assert [site.split(" <")[0] for site in sites] == [
        f"{n}x test_bench.py:{LINE} synchronising" for n in (2, 1)
    ]
    assert all(" < test_bench.py:" in site for site in sites)
    assert sites[0] != sites[1]  # the two calls in the test, on lines of their own


def test_the_plain_loop_audits_its_steps_as_lmlabs_are_audited(tmp_path: Path) -> None:
    """The plain loop's audit (the control for lmlab's sync count) is in ``SyncAudit``'s
    format: ``AUDIT_STEPS`` steps, none logging; on a CPU nothing synchronises."""
    import json

    from bench.nanogpt_loop import tokens_per_second
    from bench.profiling import AUDIT_STEPS, quiet_syncs

    audit = tmp_path / "plain-syncs.json"
    shape = (1, 2, 16, 64, 2, 8, 2, 1, torch.device("cpu"))
    assert tokens_per_second(*shape, compile=False, audit=audit) > 0
    steps = json.loads(audit.read_text())["steps"]
    assert [s["step"] for s in steps] == list(range(AUDIT_STEPS))
    assert quiet_syncs(audit) == (0.0, [])


@pytest.mark.parametrize(
    ("checkpointing", "full_loss", "notes"),
    [
        (60.0, 150.0, ["40% less than storing activations", "50% more than the chunked"]),
        (110.0, 90.0, ["10% more than storing activations", "10% less than the chunked"]),
    ],
    ids=["as-expected", "the-other-way"],
)
def test_the_memory_notes_say_which_way_each_mode_differs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    checkpointing: float,
    full_loss: float,
    notes: list[str],
) -> None:
    """Each mode's note compares its peak growth with the stored, chunked step's, in the
    direction measured: a small step where recomputation costs more than it saves (the
    quick run's) read '4% less than storing activations' for 4% more."""
    import json
    import subprocess
    from types import SimpleNamespace

    from bench.cases import CASES, Settings

    growth = {"--activation-checkpointing": checkpointing, "--full-loss": full_loss}

    def probe(cmd: list[str], **kwargs) -> SimpleNamespace:  # noqa: ANN003
        mib = growth.get(cmd[-1], 100.0)  # the stored step: no flag
        return SimpleNamespace(stdout=json.dumps({"peak_growth_mib": mib}) + "\n")

    monkeypatch.setattr(subprocess, "run", probe)
    stored, *others = CASES["memory"].fn(Settings(work=tmp_path, repeats=1, quick=True))
    assert stored.note == ""
    assert [r.note for r in others] == [
        f"{notes[0]} (medians)",
        f"{notes[1]} cross-entropy (medians)",
    ]


def test_a_note_without_measurements_is_replaced_when_its_case_runs_again() -> None:
    """A case that measures nothing and says why in its note (bench-gpu's cross-entropy on a
    torch without ``linear_cross_entropy``) had no row, so the next run read its note back as
    a hand-written line and kept it forever, beside the numbers that contradict it: it gets a
    row, and its note is replaced like any case's."""
    why = "not run: torch 2.11 has no linear_cross_entropy"
    first = CaseResult("gpu", "cross-entropy", [], why, case="gpu_cross_entropy")
    before = render_section("gpu", [first], "then", "")
    assert f"- cross-entropy: {why}" in before
    stats = [Stat("full", "ms", [2.0])]
    again = CaseResult("gpu", "cross-entropy", stats, "fp32", case="gpu_cross_entropy")
    after = render_section("gpu", [again], "now", "", previous=before)
    assert "- cross-entropy: fp32" in after and why not in after
    assert "| cross-entropy | full (ms) | 2 |" in after and "no measurements" not in after


def test_mfu_on_a_gpu_of_unknown_peak_is_nan_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``peak_flops`` is None for a GPU that neither lmlab's table nor Lightning's knows (a
    B200, a GH200): bench-gpu's MFU rows then read NaN, where the division raised a
    TypeError after the case's timed runs and lost its tokens/s with them."""
    import math

    import bench.gpu_cases as gpu_cases
    from bench.cases import Settings

    monkeypatch.setattr(gpu_cases, "peak_flops", lambda *args: None)
    overrides = gpu_cases.shapes(Settings(work=tmp_path, quick=True), "gpt_small", 12, 1024)
    assert math.isnan(gpu_cases.mfu(1000.0, overrides, Settings(work=tmp_path, quick=True)))


def test_a_family_cases_note_gives_the_shape_it_ran_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--quick`` runs every GPU case at a small batch: a family case's note said the full
    run's 32 x 512 tokens per step beside numbers taken at 2 x 64."""
    import bench.gpu_cases as gpu_cases
    from bench.cases import Settings

    ran: list[list[str]] = []

    def run(s, name: str, overrides: list[str], profile: bool = False) -> gpu_cases.Run:
        ran.append(overrides)
        return gpu_cases.Run(1.0, None, None)

    monkeypatch.setattr(gpu_cases, "lmlab_run", run)
    monkeypatch.setattr(gpu_cases, "mfu", lambda *args: 0.5)
    case = gpu_cases.family_case("bert_base", [], 32, 512, "bert_base")
    for quick, shape in [(True, (2, 64)), (False, (32, 512))]:
        (result,) = case(Settings(work=tmp_path, repeats=1, quick=quick))
        batch, seq = shape
        assert result.note.startswith(f"{batch} x {seq} tokens per step")
        assert {f"data.batch_size={batch}", f"data.seq_len={seq}"} <= set(ran[-1])


@pytest.mark.slow
def test_the_host_case_splits_lmlabs_extra_host_time_into_its_loop_and_its_model(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make bench --only host`` (quick: eager, a few steps): lmlab, the plain loop around
    lmlab's model and around nanoGPT's each timed, and the two differences of each round."""
    from bench.cases import CASES, Settings

    monkeypatch.setenv("LMLAB_CACHE", str(cache_dir))
    (result,) = CASES["host"].fn(Settings(work=tmp_path, repeats=2, quick=True))
    stats = {stat.name: stat.values for stat in result.stats}
    lmlab, ours = stats["lmlab"], stats["plain loop, lmlab's model"]
    nano = stats["plain loop, nanoGPT's model"]
    assert all(v > 0 for v in [*lmlab, *ours, *nano]) and len(lmlab) == 2
    assert stats["lmlab's training loop (lmlab - plain, lmlab's model)"] == [
        a - b for a, b in zip(lmlab, ours, strict=True)
    ]
    assert stats["lmlab's model (plain loops: lmlab's - nanoGPT's)"] == [
        a - b for a, b in zip(ours, nano, strict=True)
    ]
    assert "eager" in result.note and {p.name for p in tmp_path.iterdir()} <= {"model"}


def test_with_one_pair_a_race_neither_side_always_runs_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gpu_check.sh all`` runs one pair a race: the plain loop ran first in both, so any
    advantage of running first (a cooler GPU, warmer caches) went to it twice. gpt_small's pair
    now starts with the plain loop, gpt_medium's with lmlab; more pairs alternate."""
    from bench import gpu_cases
    from bench.cases import Settings
    from bench.cases.gpu import GPU_CASES

    ran: list[str] = []
    run = gpu_cases.Run(1.0, None, None)
    monkeypatch.setattr(gpu_cases, "lmlab_run", lambda *a, **k: ran.append("lmlab") or run)
    monkeypatch.setattr(
        gpu_cases, "plain_tokens_per_second", lambda *a, **k: ran.append("plain") or 1.0
    )
    monkeypatch.setattr(gpu_cases, "mfu", lambda *a, **k: 0.5)
    s = Settings(work=tmp_path, repeats=1, quick=True, deadline=0.0)  # no extra plain run
    orders = {}
    for case in ("gpu_gpt_small", "gpu_gpt_medium"):
        ran.clear()
        GPU_CASES[case](dataclasses.replace(s, repeats=1))
        orders[case] = list(ran)
    assert orders == {"gpu_gpt_small": ["plain", "lmlab"], "gpu_gpt_medium": ["lmlab", "plain"]}
    ran.clear()
    GPU_CASES["gpu_gpt_medium"](dataclasses.replace(s, repeats=2, deadline=1e12))
    assert ran[:4] == ["lmlab", "plain", "plain", "lmlab"]
