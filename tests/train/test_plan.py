"""The frozen run plan: resolved once, saved as plan.json, the only source of the Trainer's
steps, accumulation and precision; the composed config Hydra saved is never written to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lmlab.config import BudgetKind, ParamCount
from lmlab.errors import ConfigError
from lmlab.train.batch import GlobalBatch
from lmlab.train.budget import Budget
from lmlab.train.machine import check_accelerator
from lmlab.train.plan import RunPlan, check_resumable

# a one-block model of width 32: what these tests assert rests on the steps, the rows and the
# plan, not on the model's size (gpt_tiny's timed steps were most of a dry run's time)
TINY = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2"]

# a token budget (not trainer.max_steps), accumulation 2, precision auto; +debug=smoke's
# settings but its trainer.max_steps, which a token budget refuses
RUN = [
    "logger=csv",
    "data.max_bytes=1000000",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "checkpoint.every_n_steps=0",
    "budget=tokens",
    "budget.tokens=10000",
    "data.batch_size=4",
    "trainer.accumulate_grad_batches=2",
    "trainer.precision=auto",
    "callbacks.sample=null",
    *TINY,
]


def test_the_saved_config_is_what_was_given_and_plan_json_what_ran(
    tmp_path: Path, cache_dir: Path, run_command, capsys: pytest.CaptureFixture
) -> None:
    """The command line in-process (Hydra's own ``.hydra/`` writes, as a user's run)."""
    here = [*RUN, f"hydra.run.dir={tmp_path}", f"data.cache_dir={cache_dir}"]
    assert run_command("train", *here) == 0, capsys.readouterr().err[-2000:]
    saved = yaml.safe_load((tmp_path / ".hydra" / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 300  # trainer=cpu's, as composed (not asked for)
    assert saved["trainer"]["accumulate_grad_batches"] == 2
    assert saved["trainer"]["precision"] == "auto"
    plan = json.loads((tmp_path / "plan.json").read_text())
    steps = -(-10000 // (8 * 256))  # ceil(D / tokens per step)
    assert plan["steps"] == steps == 5
    assert plan["batch"]["accumulation"] == 2 and plan["batch"]["global_batch_size"] == 8
    assert plan["precision"] == "32-true"  # auto, resolved on a CPU
    assert plan["train_samples"] == steps * 8
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["global_step"] == plan["steps"] and results["batch"] == plan["batch"]
    assert results["precision"] == plan["precision"]
    # a resume with another global batch would read the wrong rows: refused, naming the field
    capsys.readouterr()
    longer = ["resume=true", "trainer.accumulate_grad_batches=1", "budget.tokens=2e4"]
    assert run_command("train", *here, *longer) == 2
    assert "global_batch_size=8, this run 4" in capsys.readouterr().err


def plan(rows: int, seq_len: int = 64, steps: int = 10) -> RunPlan:
    batch = GlobalBatch(micro_batch=rows, devices=1, accumulation=1, seq_len=seq_len)
    budget = Budget(
        BudgetKind.steps,
        steps * batch.tokens,
        steps,
        0.0,
        batch.tokens,
        0.0,
        None,
        ParamCount.active,
        1000,
    )
    return RunPlan(batch, "32-true", budget, vocab_size=64, params=1000, active_params=1000)


def test_the_plan_names_the_precision_lightning_runs_on_a_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """plan.json, the dry run's timing and the Trainer take the plan's precision: Lightning's
    full name for a short spelling, and the bf16-mixed it runs on a CPU for 16-mixed (it has
    no fp16 autocast there). plan.json said ``16-mixed`` and the dry run timed fp16 steps,
    many times slower here than the bf16 the run took. A GPU run keeps 16-mixed."""
    import lightning as L

    from lmlab.train.machine import resolve_precision, trainer_precisions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr("lmlab.errors._SAID", set())  # said in this test, whatever ran before
    for accelerator in ("cpu", "auto"):
        for asked in trainer_precisions():
            if asked == "auto" or asked.startswith("transformer-engine"):
                continue  # auto: lmlab's; Transformer Engine: not installed here
            cfg = OmegaConf.create({"precision": asked, "accelerator": accelerator})
            built = L.Trainer(accelerator="cpu", precision=asked, logger=False).precision
            assert resolve_precision(cfg) == built, (accelerator, asked)
    assert "trainer.precision=16 runs as bf16-mixed on a CPU" in caplog.text
    gpu = OmegaConf.create({"precision": "16", "accelerator": "gpu"})
    assert resolve_precision(gpu) == "16-mixed"


def test_a_true_16_bit_precision_says_its_updates_round_away(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """bf16-true and 16-true keep the weights and AdamW's state in 16 bits, where an update
    below half a weight's spacing rounds away: a 400-step run learned 0.15 nats less than
    bf16-mixed and fp32 (unsaid, so a sweep over precisions ranked the rounding). Said once,
    at planning; the mixed and full precisions say nothing."""
    from lmlab.train.machine import resolve_precision

    monkeypatch.setattr("lmlab.errors._SAID", set())
    for asked in ("bf16-mixed", "32-true", "16-mixed", "64-true", "bf16-true", "bf16-true"):
        resolve_precision(OmegaConf.create({"precision": asked, "accelerator": "gpu"}))
    (said,) = [r.getMessage() for r in caplog.records if "rounds away" in r.getMessage()]
    assert said.startswith("trainer.precision=bf16-true keeps the weights and AdamW's state in")
    resolve_precision(OmegaConf.create({"precision": "16-true", "accelerator": "gpu"}))
    assert "trainer.precision=16-true keeps the weights and AdamW's state in fp16" in caplog.text


def test_resume_checks_the_data_position_not_the_length() -> None:
    saved = plan(8).as_dict()
    check_resumable(saved, plan(8, steps=50), Path("run"))  # a longer run continues
    check_resumable(None, plan(4), Path("run"))  # a run from before plans were saved
    with pytest.raises(ConfigError, match="global_batch_size=8, this run 4"):
        check_resumable(saved, plan(4), Path("run"))
    with pytest.raises(ConfigError, match="seq_len=64, this run 32"):
        check_resumable(saved, plan(8, seq_len=32), Path("run"))
    assert plan(8).start_sample(3) == 24 and plan(8).trainer_args({})["max_steps"] == 10


def test_a_record_of_another_data_preparation_is_refused() -> None:
    """A plan or checkpoint record naming another data preparation version is refused; one
    without it (saved before versions were recorded) is left to the corpus's own checks."""
    from lmlab.train.plan import PREPARATION

    saved = plan(8).resume_record()
    assert PREPARATION in saved  # a checkpoint keeps it
    check_resumable(saved, plan(8), Path("run"), "checkpoint last.ckpt")
    older = {key: v for key, v in saved.items() if key != PREPARATION}
    check_resumable(older, plan(8), Path("run"), "checkpoint last.ckpt")
    with pytest.raises(ConfigError, match=r"its checkpoint last.ckpt records data_preparation=0"):
        check_resumable(saved | {PREPARATION: 0}, plan(8), Path("run"), "checkpoint last.ckpt")


def test_flex_attention_is_refused_before_training_off_cuda(tmp_path: Path) -> None:
    """FlexAttention has no backward pass off CUDA: refused before data, plan or model."""
    from lmlab.train.compose import compose_train
    from lmlab.train.run import train

    overrides = ["+debug=smoke", "model.positional=alibi", "model.attention_kernel=flex"]
    cfg = compose_train([*overrides, "trainer.accelerator=cpu"], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=r"model.attention_kernel=flex cannot train with "):
        train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and "attention_kernel=flex" in results["error"]
    assert [p.name for p in tmp_path.rglob("*.json")] == ["results.json"]  # no plan, no data


def test_a_gpu_run_is_refused_where_torch_sees_no_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trainer=gpu on a machine without one: one line naming the field and what to use,
    before any data (Lightning raised once the Trainer was built, through a traceback)."""
    from lmlab.train.compose import compose_train
    from lmlab.train.run import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    cfg = compose_train(["+debug=smoke", "trainer=gpu"], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError) as refused:
        train(cfg)
    assert str(refused.value) == (
        f"trainer.accelerator=gpu needs a CUDA GPU and torch sees none (torch "
        f"{torch.__version__} is a CPU build); use trainer=cpu, or trainer.accelerator=auto to "
        "take a GPU where there is one"
    )
    assert [p.name for p in tmp_path.rglob("*.json")] == ["results.json"]  # no plan, no data
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build without a device
    with pytest.raises(ConfigError, match=r"accelerator=cuda .*\(CUDA 12.8\) finds no device"):
        check_accelerator(OmegaConf.create({"accelerator": "cuda", "devices": 1}))
    for fine in ("cpu", "auto"):
        check_accelerator(OmegaConf.create({"accelerator": fine, "devices": 4}))


def test_more_gpus_than_the_machine_has_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"^trainer.devices=4 but torch sees 2 CUDA GPU\(s\)"):
        check_accelerator(OmegaConf.create({"accelerator": "gpu", "devices": 4}))
    for devices in (2, 1, "auto", -1, "0,1", [0, 1]):
        check_accelerator(OmegaConf.create({"accelerator": "gpu", "devices": devices}))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "callbacks.sample.max_new_tokens=0",
            "callbacks.sample.max_new_tokens=0 must be >= 1 (callbacks.sample=null: no sample)",
        ),
        (
            "callbacks.sample.temperature=-0.5",
            "callbacks.sample.temperature=-0.5 must be >= 0 (0: greedy)",
        ),
        (
            "callbacks.sample.top_k=0",
            "callbacks.sample.top_k=0 must be >= 1 (or null: every token)",
        ),
        (
            "+callbacks.sample.top_p=0.9",
            "callbacks.sample.top_p=0.9: unknown key (lmlab.train.callbacks.Sample does not "
            "take it); allowed: prompt, max_new_tokens, temperature, top_k, seed",
        ),
        (
            "callbacks.checkpoint.save_top_k=abc",  # its annotation's type: int
            "callbacks.checkpoint.save_top_k=abc: allowed: an integer",
        ),
        (  # the constructor's own refusal, naming the field
            "callbacks.checkpoint.save_top_k=-3",
            "callbacks.checkpoint.save_top_k=-3: allowed an int >= 1 (the newest k), 0 or -1",
        ),
        (  # Lightning's MisconfigurationException: was a chained traceback
            "callbacks.checkpoint.every_n_train_steps=-1",
            "callbacks.checkpoint.every_n_train_steps=-1: Invalid value for "
            "every_n_train_steps=-1. Must be >= 0",
        ),
        (
            "callbacks.checkpoint.every_n_train_steps=abc",
            "callbacks.checkpoint.every_n_train_steps=abc: allowed: an integer, null",
        ),
        ("callbacks.sample.temperature=hot", "callbacks.sample.temperature=hot: allowed: a number"),
        ("callbacks.guard.mode=bogus", "callbacks.guard.mode=bogus: allowed: stop, skip, off"),
        ("callbacks.progress_bar.refresh_rate=1.5", "callbacks.progress_bar.refresh_rate=1.5: all"),
        (
            "+callbacks.mine._target_=mymodule.MyCallback",
            "callbacks.mine._target_='mymodule.MyCallback' cannot be imported "
            "(ModuleNotFoundError: No module named 'mymodule')",
        ),
    ],
)
def test_a_callbacks_bad_value_is_refused_before_any_data(
    tmp_path: Path, override: str, message: str
) -> None:
    """The end-of-run sample's values are checked when the run starts, not found wrong when
    it ends (where the sample would fail and the run carry on without it)."""
    from lmlab.train.compose import compose_train
    from lmlab.train.run import train

    cfg = compose_train(["+debug=smoke", override], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError) as refused:
        train(cfg)
    # Python 3.13 appends a suggestion to a TypeError ("... 'top_p'. Did you mean 'top_k'?")
    assert str(refused.value).removesuffix(". Did you mean 'top_k'?").startswith(message)
    assert [p.name for p in tmp_path.rglob("*.json")] == ["results.json"]  # no plan, no data


@pytest.mark.parametrize("trainer", ["cpu", "ddp", "fsdp"])
def test_the_trainer_gets_plain_lists_and_dicts(tmp_path: Path, trainer: str) -> None:
    """Lightning 2.4 took the config's ListConfig of plugins for one plugin and refused it, so
    no run started there. The Trainer's arguments are plain Python containers on any
    Lightning: read here by building ``dict`` in the Trainer's place."""
    from omegaconf import Container

    from lmlab.train.compose import compose_train
    from lmlab.train.trainer import build_trainer

    cfg = compose_train([f"trainer={trainer}"], tmp_path)
    cfg.trainer._target_ = "builtins.dict"
    kwargs = build_trainer(cfg, callbacks=[], logger=False)
    assert not [k for k, v in kwargs.items() if isinstance(v, Container)]
    assert type(kwargs["plugins"]) is list
    assert type(kwargs["plugins"][0]).__name__ == "AtomicCheckpointIO"


@pytest.mark.parametrize("profiler", [None, "simple"])
def test_a_trainer_without_a_profiler_enters_one_shared_context_per_hook(
    tmp_path: Path, profiler: str | None
) -> None:
    """Lightning enters ``profiler.profile(name)`` around every hook it calls, about 140 a
    step. Where ``trainer.profiler`` names none, the profiler records nothing, as Lightning's
    default does, and hands every hook one shared context (nested too) instead of building a
    context manager each time; a profiler the user names is Lightning's own."""
    from lightning.pytorch.profilers import SimpleProfiler

    from lmlab.train.compose import compose_train
    from lmlab.train.trainer import NoProfiler, build_trainer

    named = [f"+trainer.profiler={profiler}"] if profiler else []
    trainer = build_trainer(compose_train(named, tmp_path), callbacks=[], logger=False)
    if profiler:
        assert type(trainer.profiler) is SimpleProfiler
        return
    assert type(trainer.profiler) is NoProfiler
    hook = trainer.profiler.profile("[Callback]Throughput.on_train_batch_end")
    assert hook is trainer.profiler.profile("run_training_batch")
    with hook, trainer.profiler.profile("optimizer_step") as inner:
        assert inner is None
    assert trainer.profiler.summary() == ""


def test_a_dry_run_sizes_the_model_at_the_tokenizer_a_run_prepared(tmp_path: Path) -> None:
    """A byte-level BPE stops below ``data.vocab_size`` on a small corpus. A dry run prepares
    no data, so before any run it plans at the target and says so; once a run has cached this
    data's tokenizer, a dry run plans at its true size: the run's parameters (and with them
    the steps a compute budget gives)."""
    from lmlab.train.compose import compose_train
    from lmlab.train.run import train
    from smoke import SMOKE

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} of a small corpus" for i in range(400)))
    cache = tmp_path / "cache"
    run = [*SMOKE, "logger=none", "data=text", f"data.path={corpus}", "data.vocab_size=4096"]
    run += ["data.seq_len=32", "callbacks.sample=null", *TINY]

    def dry(name: str) -> dict:
        train(compose_train([*run, "dry_run=true"], tmp_path / name, cache))
        return json.loads((tmp_path / name / "plan.json").read_text())

    before = dry("before")
    assert before["vocab_size"] == 4096 and before["vocab_from"].startswith("data.vocab_size")
    train(compose_train(run, tmp_path / "run", cache))
    ran = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert ran["vocab_size"] < 4096  # the premise: BPE stopped lower
    after = dry("after")
    assert after["vocab_from"] == "this data's tokenizer, cached"
    for key in ("vocab_size", "params", "active_params"):
        assert after[key] == ran[key], key


def test_a_batch_larger_than_the_training_split_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each step's rows beyond the training split's come from the next epoch's order: the
    run trains, and says that its batches repeat rows."""
    from lmlab.train.compose import compose_train
    from lmlab.train.run import train
    from smoke import SMOKE

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} of a small corpus" for i in range(40)))
    run = [*SMOKE, "logger=none", "data=text", f"data.path={corpus}", "data.tokenizer=char"]
    run += ["data.seq_len=32", "trainer.max_steps=2", "callbacks.sample=null", *TINY]
    train(compose_train([*run, "data.batch_size=64"], tmp_path / "run", tmp_path / "cache"))
    train_rows = json.loads((tmp_path / "run" / "plan.json").read_text())["corpus"]["train"]
    assert train_rows["rows"] < 64  # the premise
    said = [r.getMessage() for r in caplog.records if "every step repeats rows" in r.getMessage()]
    assert said and said[0].startswith("each step's 64 rows (data.global_batch_size"), said
    assert f"the training split's {train_rows['rows']}: every step" in said[0]
    caplog.clear()
    train(compose_train([*run, "data.batch_size=4"], tmp_path / "small", tmp_path / "cache"))
    assert not [r for r in caplog.records if "every step repeats rows" in r.getMessage()]


def test_a_warmup_longer_than_the_run_is_said_as_it_is_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``scheduler.warmup_steps`` at or past the run's steps is cut to one step short of them
    (``warmup_used``): said with the numbers, in a dry run's plan too, and only then. The
    schedule built does what the warning says: the peak comes at the last step."""
    from lmlab.train.compose import compose_train
    from lmlab.train.run import train
    from lmlab.train.schedule import warmup_cosine, warmup_cut
    from smoke import SMOKE

    def warnings(*overrides: str) -> list[str]:
        caplog.clear()
        cfg = compose_train([*SMOKE, *TINY, "dry_run=true", *overrides], tmp_path, tmp_path)
        with caplog.at_level("WARNING", logger="lmlab"):
            train(cfg)
        return [m for m in caplog.messages if "warmup" in m]

    assert warnings("scheduler.warmup_steps=100") == [
        "scheduler.warmup_steps=100 is cut to 3 steps of this run's 4: the learning rate "
        "reaches its peak at the last step and never decays; lower scheduler.warmup_steps (or "
        "train more steps) for the schedule asked for"
    ]
    assert warnings("scheduler.warmup_steps=4") != []  # 4 of 4: cut to 3 too
    assert warnings("scheduler.warmup_steps=3") == []  # fits: the peak at the last step
    assert warnings() == []  # +debug=smoke's 1
    other = {"_target_": "mymodule.schedule", "warmup_steps": 100}
    assert warmup_cut(other, 4) is None  # another schedule's warmup is its own
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_cosine(optimizer, total_steps=4, warmup_steps=100, min_lr_ratio=0.1)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0])
