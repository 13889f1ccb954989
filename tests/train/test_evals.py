"""Evals during training (``eval.tasks``, ``eval.every_n_steps``): checked before any work,
logged as ``eval/<task>/<metric>`` to CSV and W&B at their steps, kept in results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_rundir import rows, steps, stop_at_4_and_resume

from lmlab.config import resolve_configs
from lmlab.errors import ConfigError
from lmlab.infer.declared import Declared
from lmlab.train.compose import compose_train
from lmlab.train.run import train
from smoke import SMOKE

ACC = "eval/stdlib_nextline/acc"


def number(value: object) -> float:
    return float(json.loads(value) if isinstance(value, str) else value)  # W&B: JSON text too


def test_evals_reach_csv_wandb_and_results(tmp_path: Path, cache_dir: Path, wandb_records) -> None:
    """Evals after steps 2, 4 and 5 (every 2 steps, and the last) are logged where the
    validation of the same weights is, on Lightning's axis: the rows of the weights after N
    steps carry N - 1, in metrics.csv and on W&B's ``trainer/global_step``, which never goes
    back. The last step is no validation step: the validation after training is there too."""
    overrides = [*SMOKE, "logger=wandb", "eval.tasks=[stdlib_nextline,stdlib_cloze]"]
    overrides += ["eval.every_n_steps=2", "eval.limit=3", "trainer.max_steps=5"]
    train(compose_train(overrides, tmp_path, cache_dir))
    evals = [r for r in rows(tmp_path) if r.get(ACC)]
    assert [int(r["step"]) for r in evals] == steps(tmp_path, "val/loss") == [1, 3, 4]
    assert all(r["eval/stdlib_cloze/perplexity"] for r in evals)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and results["global_step"] == 5
    assert results[ACC] == pytest.approx(float(evals[-1][ACC]))
    assert f"{ACC}_stderr" in results and "eval/stdlib_cloze/acc" in results
    history = [r["history"]["item"] for r in wandb_records(tmp_path) if r["type"] == "history"]
    axis = [number(h["trainer/global_step"]) for h in history if "trainer/global_step" in h]
    assert axis == sorted(axis), axis
    on_axis = {
        name: [number(h["trainer/global_step"]) for h in history if name in h]
        for name in (ACC, "val/loss")
    }
    assert on_axis[ACC] == on_axis["val/loss"] == [1, 3, 4]
    last = [h for h in history if ACC in h][-1]
    assert number(last[ACC]) == results[ACC]


def test_a_run_stopped_where_evals_were_due_resumes_with_each_eval_once(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Stopped in the validation after step 4, whose evals were logged (at 3, with that
    validation) before the checkpoint was saved: the resumed run evaluates step 4 again and
    metrics.csv holds each eval once, beside its validation. A completed run resumed again
    (its final validation and evals redone) likewise."""

    run = [*SMOKE, "logger=csv", "trainer.max_steps=6", "eval.tasks=[stdlib_nextline]"]
    run += ["eval.every_n_steps=2", "eval.limit=3"]
    stop_at_4_and_resume(run, tmp_path, cache_dir)
    assert steps(tmp_path, ACC) == steps(tmp_path, "val/loss") == [1, 3, 5]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"status": "running"}))  # as a kill after the last checkpoint
    train(compose_train([*run, "resume=auto"], tmp_path, cache_dir))
    assert json.loads(results.read_text())["resumed_from"]
    assert steps(tmp_path, ACC) == steps(tmp_path, "val/loss") == [1, 3, 5]


@pytest.mark.parametrize(
    "override,message",
    [
        ("eval.every_n_steps=-1", "eval.every_n_steps=-1 must be >= 0"),
        ("eval.limit=0", "eval.limit=0 must be >= 1"),
        ("eval.max_gen_toks=0", "eval.max_gen_toks=0 must be >= 1"),
        ("eval.tasks=[a,' ']", "is not a task name"),
        (
            "eval.system_instruction=Be brief.",
            "eval.system_instruction='Be brief.' is of the chat format; allowed with "
            "eval.apply_chat_template=true",
        ),
        ("eval.chat_template=tool_use", "eval.chat_template='tool_use' is of the chat format"),
        (
            "eval.apply_chat_template=true",
            r"eval.apply_chat_template=true formats the evals' requests, and eval.tasks is "
            r"empty: allowed with eval.tasks=\[<task>, ...\]",
        ),
    ],
)
def test_bad_eval_values_are_refused_before_any_work(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_configs(compose_train([override]))


def test_a_generating_tasks_answers_leave_the_prompt_room_before_training_starts(
    tmp_path: Path, cache_dir: Path, generating_tasks
) -> None:
    """A generating task that sets no length answers in ``eval.max_gen_toks`` tokens (256, as
    ``lmlab evaluate``'s ``max_gen_toks=``): on a GPT of 256 positions that leaves its prompt
    none, which is refused before any data is prepared, naming the setting; a task whose own
    length does not fit, or that asks for beams, likewise. ``eval.max_gen_toks=8`` runs it."""
    generating_tasks("gen_cloze")
    generating_tasks("gen_long", max_gen_toks=300)
    generating_tasks("gen_beams", num_beams=4)
    refusals = {
        "gen_cloze": r"^eval.max_gen_toks \(the answers' length where task 'gen_cloze' sets none\)"
        r"=256 leaves no room .* allowed: eval.max_gen_toks <= 255$",
        "gen_long": r"^the generation_kwargs of task 'gen_long': max_gen_toks=300 leaves no "
        r"room .* allowed: a model whose model.max_seq_len is above 300$",
        "gen_beams": r"^the generation_kwargs of task 'gen_beams': num_beams=4 is not",
    }
    for task, message in refusals.items():
        run = [*SMOKE, f"eval.tasks=[{task}]"]
        run += [] if task == "gen_cloze" else ["eval.max_gen_toks=8"]  # the task's own wins
        with pytest.raises(ConfigError, match=message):
            train(compose_train(run, tmp_path / task, tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()  # refused before any data was prepared
    run = [*SMOKE, "eval.tasks=[gen_cloze]", "eval.max_gen_toks=8", "eval.limit=2"]
    train(compose_train([*run, "callbacks.sample=null"], tmp_path / "run", cache_dir))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "eval_failures" not in results, results["eval_failures"]
    assert 0.0 <= results["eval/gen_cloze/exact_match"] <= 1.0
    assert results["eval_n_samples"]["gen_cloze"]["effective"] == 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["eval.tasks=[stdlib_nextline,no_such_task]"], "eval.tasks: unknown task 'no_such"),
        (["model=bert_tiny", "eval.tasks=[stdlib_nextline]"], "model.family=bert: a bert model is"),
    ],
)
def test_tasks_are_checked_before_training_starts(
    tmp_path: Path, overrides: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmlab.infer import harness

    class ShippedOnly:  # lm-eval's hub index takes seconds to build; these names need none
        all_tasks = harness.shipped_tasks()

    monkeypatch.setattr(harness, "task_manager", lambda hub, folders=(): ShippedOnly())
    with pytest.raises(ConfigError, match=message):
        train(compose_train([*SMOKE, *overrides], tmp_path, tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()  # refused before any data was prepared


def test_evals_run_every_n_steps_at_the_last_and_again_at_a_resumed_step() -> None:
    """When the callback evaluates: at multiples of every_n_steps and at the last step, once
    per step (micro-batches of one step share it), and at the start of a run resumed at a
    step where evals were due (metrics.csv dropped that step's rows)."""
    from types import SimpleNamespace

    from lmlab.train.callbacks import EvalTasks

    ran: list[int] = []

    def fake(callback: EvalTasks) -> EvalTasks:
        def evaluate(trainer, module) -> None:
            callback.last_step = trainer.global_step
            ran.append(trainer.global_step)

        callback.evaluate = evaluate
        return callback

    trainer = SimpleNamespace(global_step=0, max_steps=300)
    fresh = fake(EvalTasks(tasks=["stdlib_nextline"], every_n_steps=100))
    fresh.on_train_start(trainer, None)
    for step in (1, 99, 100, 100, 101, 200, 250, 300):
        trainer.global_step = step
        fresh.on_train_batch_end(trainer, None, None, None, 0)
    assert ran == [100, 200]  # the last step's: after its checkpoint, at the end of training
    fresh.on_train_end(trainer, None)
    fresh.on_train_end(trainer, None)
    assert ran == [100, 200, 300]
    ran.clear()
    resumed = fake(EvalTasks(tasks=["stdlib_nextline"], every_n_steps=100))
    trainer.global_step = 200
    resumed.on_train_start(trainer, None)
    resumed.on_train_batch_end(trainer, None, None, None, 0)
    assert ran == [200]
    assert not EvalTasks(tasks=[], every_n_steps=1).due(trainer)  # no tasks: never


def test_a_rank_the_harness_gives_no_results_logs_no_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Under FSDP every rank evaluates the sharded weights, and lm-eval returns the results on
    rank 0 only: another rank has nothing to log, which is no failure of the evals."""
    import contextlib
    import logging
    from types import SimpleNamespace

    import torch

    from lmlab.infer import evaluate, harness
    from lmlab.train.callbacks import EvalTasks

    monkeypatch.setattr(evaluate, "LmlabLM", lambda pre, batch_size, **settings: None)
    monkeypatch.setattr(harness, "run_tasks", lambda *args, **kwargs: None)  # lm-eval on rank 1
    trainer = SimpleNamespace(
        global_step=2,
        max_steps=4,
        is_global_zero=False,
        loggers=[],
        callbacks=[],
        default_root_dir=".",
        datamodule=SimpleNamespace(tokenizer=None),
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
    )
    module = SimpleNamespace(
        model=torch.nn.Linear(1, 1), model_cfg=None, _device_mesh="fsdp", declared=Declared()
    )
    callback = EvalTasks(tasks=["stdlib_nextline"], every_n_steps=2)
    with caplog.at_level(logging.WARNING):
        callback.evaluate(trainer, module)
    assert callback.metrics == {} and callback.last_step == 2
    assert not [r for r in caplog.records if "failed" in r.getMessage()], caplog.messages


def test_a_run_extended_past_its_end_keeps_its_last_steps_evals(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A completed run of 5 steps evaluated its last step; extended to 7, step 5 is no longer
    due (not a multiple of 2, not the last), so the resumed run does not evaluate it again
    and metrics.csv keeps its row: evals at 2, 4, 5, 6 and 7 (rows 1, 3, 4, 5, 6)."""
    run = [*SMOKE, "logger=csv", "eval.tasks=[stdlib_nextline]", "eval.every_n_steps=2"]
    run += ["eval.limit=3", "callbacks.sample=null"]
    train(compose_train([*run, "trainer.max_steps=5"], tmp_path, cache_dir))
    assert steps(tmp_path, ACC) == [1, 3, 4]
    train(compose_train([*run, "trainer.max_steps=7", "resume=true"], tmp_path, cache_dir))
    assert steps(tmp_path, ACC) == [1, 3, 4, 5, 6]


def test_the_last_steps_evals_run_after_its_checkpoint_is_saved(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: the last step's evals ran before its checkpoint (60 s of them on the shipped
    tasks), so a second Ctrl-C or a kill there left "interrupted before the first
    checkpoint" after every step had trained. The checkpoint of the last step is on disk
    when its evals start; a periodic eval is not held back (no checkpoint at step 2 here)."""
    import torch

    from lmlab.infer import harness

    run_tasks = harness.run_tasks
    seen: list[tuple[int | None, int | None]] = []

    def looking(lm, *args: object, **kwargs: object) -> dict:
        last = tmp_path / "checkpoints" / "last.ckpt"
        saved = torch.load(last, weights_only=True)["global_step"] if last.exists() else None
        seen.append((lm.pre.global_step, saved))
        return run_tasks(lm, *args, **kwargs)

    monkeypatch.setattr(harness, "run_tasks", looking)
    run = [*SMOKE, "logger=csv", "eval.tasks=[stdlib_nextline]", "eval.every_n_steps=2"]
    train(compose_train([*run, "eval.limit=2", "callbacks.sample=null"], tmp_path, cache_dir))
    assert seen == [(2, None), (4, 4)]
    assert steps(tmp_path, ACC) == [1, 3]


def test_a_stop_asked_during_the_evals_ends_them_between_two_batches(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Ctrl-C or a cluster's SIGTERM during the evals waited for all of them (60 s on the
    shipped tasks in QA; a hub task's take far longer, past a SLURM grace period). The
    evals ask between two batches: a stop ends them, recorded as cut short (a resume
    evaluates that step again), and the run goes on to its stop. A Ctrl-C once training has
    ended cuts them too."""
    import contextlib
    import logging
    import signal
    from types import SimpleNamespace

    import torch

    from lmlab.config import ModelConfig
    from lmlab.data.tokenizer import train_bpe
    from lmlab.infer.harness import TASKS_DIR
    from lmlab.model import build_model
    from lmlab.train.callbacks import EvalTasks
    from lmlab.train.preemption import PREEMPT, Preemption

    snippets = [json.loads(line)["text"] for line in (TASKS_DIR / "stdlib_perplexity.jsonl").open()]
    tok = train_bpe(snippets, 400)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=1, n_heads=2)
    model = build_model(cfg)
    stop = Preemption(".")
    forwards = []

    def forward(module: torch.nn.Module, args: tuple) -> None:
        forwards.append(len(args[0]))
        stop._asked = PREEMPT  # a SIGTERM arrives during the first batch

    model.register_forward_pre_hook(forward)
    trainer = SimpleNamespace(
        global_step=2,
        max_steps=4,
        is_global_zero=True,
        loggers=[],
        callbacks=[stop],
        default_root_dir=".",
        datamodule=SimpleNamespace(tokenizer=tok),
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
    )
    module = SimpleNamespace(model=model, model_cfg=cfg, declared=Declared())
    callback = EvalTasks(tasks=["stdlib_nextline"], limit=8, batch_size=2)
    with caplog.at_level(logging.WARNING):
        callback.evaluate(trainer, module)
    assert forwards == [2]  # of 8 items' 32 + 32 requests, two at a time
    cut = "cut short: the run was stopping"
    assert callback.failures == [{"step": 2, "tasks": ["stdlib_nextline"], "error": cut}]
    assert callback.metrics == {}
    assert caplog.messages == [
        "the evals at step 2 were cut short: the run is stopping (a resume evaluates them again)"
    ]

    ended = Preemption(".")  # training has ended: Ctrl-C lets the checkpoint and record finish
    loop = SimpleNamespace(max_steps=4, max_epochs=-1, epoch_loop=SimpleNamespace(global_step=4))
    ended._fit_loop = loop
    assert not ended.stop_asked()
    handler = signal.getsignal(signal.SIGINT)
    try:
        ended._on_sigint()
    finally:
        signal.signal(signal.SIGINT, handler)
    assert ended.stop_asked() and ended._asked == 0  # no stop of training: it has ended


def test_a_sigterm_after_the_last_steps_checkpoint_keeps_one_copy_of_it(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during the final validation, which runs after the last step's checkpoint: the
    stop saved ``last.ckpt`` again, a second full copy of ``step000004.ckpt`` beside it (tens
    of GB at 7B). The step's checkpoint is now the stop's: ``last.ckpt`` stays its link, the
    record names it, and the resume finishes the run, evals included."""
    import os
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lmlab.train.task import LMTask

    def signal_at_the_end(self) -> None:
        if self.trainer.global_step == 4 and self.trainer.state.fn == "fit":
            os.kill(os.getpid(), signal.SIGTERM)  # noted by the run's handler

    run = [*SMOKE, "logger=csv", "eval.tasks=[stdlib_nextline]", "eval.limit=4"]
    run += ["eval.batch_size=2", "callbacks.sample=null", "checkpoint.every_n_steps=2"]
    run += ["callbacks.checkpoint.save_top_k=-1"]
    with monkeypatch.context() as patch:
        patch.setattr(LMTask, "on_validation_epoch_start", signal_at_the_end, raising=False)
        with pytest.raises(SIGTERMException):
            train(compose_train(run, tmp_path, cache_dir))
    stop = json.loads((tmp_path / "results.json").read_text())
    ckpts = tmp_path / "checkpoints"
    last, step = ckpts / "last.ckpt", ckpts / "step000004.ckpt"
    assert stop["status"] == "preempted" and stop["global_step"] == 4, stop
    assert stop["error"] == f"stopped by SIGTERM/SIGUSR1 after saving {last}", stop["error"]
    assert last.is_symlink() and last.resolve() == step.resolve()
    train(compose_train([*run, "resume=true"], tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and "eval_failures" not in results
    assert results["eval/stdlib_nextline/acc"] is not None
    assert last.is_symlink() and last.resolve() == step.resolve()


def test_a_stop_during_a_steps_evals_stops_at_that_step_and_its_resume_evaluates_it(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during the evals of step 3, a step with no validation: the evals end at once
    and the run stops at step 3, its record saying so (the stop used to be agreed a step
    later, in a record without the cut evals, and no resume evaluated step 3 again). The
    resume evaluates step 3, then the last step: each once, and no failure left."""
    import os
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lmlab.infer import harness

    run_tasks = harness.run_tasks
    signalled: list[int] = []

    def signal_once(lm, *args: object, **kwargs: object) -> dict:
        if not signalled:
            signalled.append(lm.pre.global_step)
            os.kill(os.getpid(), signal.SIGTERM)  # noted by the run's handler
        return run_tasks(lm, *args, **kwargs)

    run = [*SMOKE, "logger=csv", "eval.tasks=[stdlib_nextline]", "eval.every_n_steps=3"]
    run += ["eval.limit=4", "eval.batch_size=2", "callbacks.sample=null"]
    with monkeypatch.context() as patch:
        patch.setattr(harness, "run_tasks", signal_once)
        with pytest.raises(SIGTERMException):
            train(compose_train(run, tmp_path, cache_dir))
    assert signalled == [3]
    stop = json.loads((tmp_path / "results.json").read_text())
    assert stop["status"] == "preempted" and stop["global_step"] == 3
    cut = {"step": 3, "tasks": ["stdlib_nextline"], "error": "cut short: the run was stopping"}
    assert stop["eval_failures"] == [cut]
    train(compose_train([*run, "resume=true"], tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and "eval_failures" not in results
    assert steps(tmp_path, ACC) == [2, 3]  # steps 3 and 4, logged at N - 1


def test_an_answer_longer_than_the_model_reads_is_refused_before_training(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A char tokenizer spells stdlib_nextline's longest lines in more than 64 tokens: once
    the tokenizer exists, and before the first step, the run is refused naming the task (each
    eval failed on it after training, the run completing with it in eval_failures)."""
    run = [*SMOKE, "data.tokenizer=char", "model.max_seq_len=64", "eval.tasks=[stdlib_nextline]"]
    with pytest.raises(
        ConfigError,
        match=r"^eval.tasks: task 'stdlib_nextline': a loglikelihood request's continuation "
        r"\(.*\) is \d+ tokens, more than the model reads \(model.max_seq_len=64\)",
    ):
        train(compose_train(run, tmp_path / "run", cache_dir))
    assert not (tmp_path / "run" / "checkpoints").exists()  # no step trained


def test_a_runs_evals_take_tasks_from_ones_own_folder(
    tmp_path: Path, cache_dir: Path, own_tasks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eval.include_path=<folder>``: the tasks of a folder of the user's task YAML files run
    during training as the shipped ones do (``my_nextline``, a copy of ``stdlib_nextline``
    under its own name, scores what the shipped task scores on the same weights). Without the
    folder the name is refused before any data is prepared."""
    from lmlab.infer import harness

    # the harness's own index (30 s to build) stands empty here: the name is no task at all
    real = harness.task_manager
    monkeypatch.setattr(harness, "task_manager", lambda hub, folders=(): real(False, folders))
    run = [*SMOKE, "logger=csv", "eval.tasks=[my_nextline,stdlib_nextline]", "eval.limit=4"]
    run += ["callbacks.sample=null"]
    with pytest.raises(ConfigError, match=r"^eval.tasks: unknown task 'my_nextline'"):
        train(compose_train(run, tmp_path / "without", cache_dir))
    assert not (tmp_path / "without" / "plan.json").exists()
    train(compose_train([*run, f"eval.include_path={own_tasks}"], tmp_path / "run", cache_dir))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["eval/my_nextline/acc"] == results[ACC] is not None


def test_the_command_that_scores_a_cut_last_step_again_is_one_a_shell_reads(
    tmp_path: Path,
) -> None:
    """The last step's evals cut short name the ``lmlab evaluate`` command that scores its
    checkpoint with the same settings, each word quoted as a shell needs it (a system
    instruction with an apostrophe broke the line), the task folder included (it was left
    out)."""
    import shlex
    from types import SimpleNamespace

    from lmlab.train.callbacks import EvalTasks

    folder = tmp_path / "my tasks"
    evals = EvalTasks(
        tasks=["stdlib_cloze", "mine"],
        include_path=str(folder),
        limit=4,
        apply_chat_template=True,
        chat_template="tool_use",
        fewshot_as_multiturn=False,
        system_instruction="You're terse.",
    )
    ckpt = tmp_path / "a run" / "last.ckpt"
    trainer = SimpleNamespace(
        global_step=6,
        max_steps=6,
        checkpoint_callback=SimpleNamespace(last_model_path=str(ckpt)),
        default_root_dir=str(tmp_path),
    )
    said = evals.redo(trainer)
    command = said.removeprefix("training has ended; ").removesuffix(" scores its last checkpoint")
    assert shlex.split(command) == [
        "python",
        "src/evaluate.py",
        f"ckpt={ckpt}",
        "tasks=stdlib_cloze,mine",
        f"include_path={folder}",
        "limit=4",
        "apply_chat_template=true",
        "chat_template=tool_use",
        "fewshot_as_multiturn=false",
        "system_instruction=You're terse.",
    ]
