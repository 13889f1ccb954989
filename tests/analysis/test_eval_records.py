"""Which evaluation ``compare`` ranks a run by: ``eval/step<N>.json`` of the run's own final
weights only (``model_digest``, which results.json records), with a warning where runs scored
a task on different item counts, eval settings never as knobs, and evals that failed during
training said, not an unexplained ``unknown metric``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_compare import JOBS, MAX_STEPS, make_multirun, results_for, write_job

import smoke
from lmlab.analysis import multirun as mrun
from lmlab.analysis import ranking
from lmlab.analysis.comparable import eval_notes
from lmlab.analysis.compare import compare
from lmlab.analysis.multirun import CompareError
from lmlab.analysis.runs import load_runs
from lmlab.errors import ConfigError
from lmlab.train.compose import compose_train
from lmlab.train.run import train
from lmlab.train.runfiles import holds_run

TASK = "stdlib_nextline"
ACC = f"eval/{TASK}/acc_mutual_info"


def write_record(
    job: Path,
    step: int,
    value: float,
    digest: str | None,
    items: int | None = None,
    shots: int | None = None,
    chat: dict[str, object] | None = None,
) -> Path:
    """``lmlab evaluate``'s ``eval/step<N>.json`` (``items``: its task's ``n_samples``;
    ``shots``: its ``n_shot``; ``chat``: its chat settings, none in a record from before
    them)."""
    (job / "eval").mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": "x.ckpt", "global_step": step, "model_digest": digest}
    record |= {"metrics": {ACC: value}, "tasks": {}}
    if items is not None:
        settings = {"limit": items, "batch_size": 16, **(chat or {})}
        n_samples = {"original": 300, "effective": items}
        record["tasks"] = {TASK: {"n_samples": n_samples, "lm_eval": settings, "n_shot": shots}}
    path = job / "eval" / f"step{step:06d}.json"
    path.write_text(json.dumps(record))
    return path


def update_results(job: Path, **fields: object) -> None:
    results = json.loads((job / "results.json").read_text())
    (job / "results.json").write_text(json.dumps(results | fields))


# --------------------------------------------------------------------------- model_digest


def test_a_record_of_the_final_step_with_another_digest_is_skipped_with_a_warning(
    tmp_path: Path,
) -> None:
    """results.json's ``model_digest`` is that of the final weights: a record of that step
    with another digest (another model's, left in the folder or copied there) is skipped,
    named in a warning, and the run's own evals count (results.json's, else an earlier
    step's record, which no digest can check). A record of the final step with the same
    digest counts; without a digest on either side, as before."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1])
    job = root / "0"
    update_results(job, model_digest="a" * 32, **{ACC: 0.40})
    foreign = write_record(job, MAX_STEPS, 0.90, digest="b" * 32)
    (run,) = load_runs(root)
    assert mrun.run_value(run, ACC) == 0.40
    assert run.eval_step is None and str(foreign) in run.skipped_evals[0]
    rows = ranking.aggregate([run], ACC, higher_is_better=True)
    (warning,) = [line for line in ranking.summarize(rows, ACC, True) if str(foreign) in line]
    assert warning.startswith("warning: ") and "model_digest" in warning
    assert (
        not [  # ranked by another metric, the warning is left out
            line
            for line in ranking.summarize(ranking.aggregate([run], "val_loss"), "val_loss")
            if "model_digest" in line
        ]
    )

    write_record(job, MAX_STEPS // 2, 0.70, digest="c" * 32)  # an earlier step: unchecked
    update_results(job, **{ACC: None})  # no evals during training: that record counts
    (run,) = load_runs(root)
    assert (run.eval_step, mrun.run_value(run, ACC)) == (MAX_STEPS // 2, 0.70)

    write_record(job, MAX_STEPS, 0.60, digest="a" * 32)  # the run's own final weights
    (run,) = load_runs(root)
    assert (run.eval_step, mrun.run_value(run, ACC), run.skipped_evals) == (MAX_STEPS, 0.60, [])

    write_record(job, MAX_STEPS, 0.55, digest=None)  # a record without a digest: as before
    (run,) = load_runs(root)
    assert mrun.run_value(run, ACC) == 0.55
    write_record(job, MAX_STEPS, 0.50, digest="b" * 32)
    update_results(job, model_digest=None)  # an older run's results.json: as before
    (run,) = load_runs(root)
    assert mrun.run_value(run, ACC) == 0.50


# --------------------------------------------------------------------------- item counts


def two_runs(tmp_path: Path) -> Path:
    """Two variants (pre/gelu, post/relu) of one seed."""
    return make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[3:4])


def item_warnings(root: Path) -> list[str]:
    rows = ranking.aggregate(load_runs(root), ACC, higher_is_better=True)
    return [line for line in ranking.summarize(rows, ACC, True) if "numbers of items" in line]


def test_eval_metrics_of_different_item_counts_get_a_warning(tmp_path: Path) -> None:
    """One run's evals during training scored 20 items (``eval_n_samples``), the other's
    ``lmlab evaluate`` record 300: ranked by that task's metric, the summary says so, naming
    the counts and variants. The same counts, or another metric: no warning. An older
    results.json without item counts: its ``eval.limit``."""
    root = two_runs(tmp_path)
    n_samples = {TASK: {"original": 300, "effective": 20}}
    update_results(root / "0", eval_n_samples=n_samples, **{ACC: 0.40})
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=300)
    (warning,) = item_warnings(root)
    assert warning == (
        f"warning: the runs scored {TASK} on different numbers of items (20 items: "
        "norm_placement=pre, activation=gelu; 300 items: norm_placement=post, "
        f"activation=relu), so {ACC} compares samples of the task as much as the variants; "
        "evaluate every run on the same items (the same eval.limit, or lmlab evaluate limit=)"
    )
    rows = ranking.aggregate(load_runs(root), "val_loss")
    assert not [line for line in ranking.summarize(rows, "val_loss") if "items" in line]
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20)
    assert item_warnings(root) == []
    update_results(root / "0", eval_n_samples=None)
    config = yaml.safe_load((root / "0" / ".hydra" / "config.yaml").read_text())
    config["eval"] = {"tasks": [TASK], "limit": 50}
    (root / "0" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    assert "50 items: norm_placement=pre" in item_warnings(root)[0]


def shot_warnings(root: Path) -> list[str]:
    rows = ranking.aggregate(load_runs(root), ACC, higher_is_better=True)
    return [line for line in ranking.summarize(rows, ACC, True) if "few-shot" in line]


def test_eval_metrics_of_different_shots_get_a_warning(tmp_path: Path) -> None:
    """One run's evals during training scored the task 0-shot (``eval_n_shot``), the other's
    ``lmlab evaluate num_fewshot=3`` record on as many items: ranked by that task's metric,
    the summary says the shots differ, naming them and the variants (a 3-shot score beat a
    0-shot one unsaid). The same shots, or a run that recorded none: no warning."""
    root = two_runs(tmp_path)
    n_samples = {TASK: {"original": 300, "effective": 20}}
    update_results(root / "0", eval_n_samples=n_samples, eval_n_shot={TASK: 0}, **{ACC: 0.40})
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=3)
    (warning,) = shot_warnings(root)
    assert warning == (
        f"warning: the runs scored {TASK} with different numbers of few-shot examples (0-shot: "
        "norm_placement=pre, activation=gelu; 3-shot: norm_placement=post, activation=relu), "
        f"so {ACC} compares the prompts as much as the variants; evaluate every run with the "
        "same num_fewshot= (the evals during training use the task's own)"
    )
    assert item_warnings(root) == []
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=0)
    assert shot_warnings(root) == []
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=3)
    update_results(root / "0", eval_n_shot=None)  # an older run: its shots are not known
    assert shot_warnings(root) == []


def format_warnings(root: Path) -> list[str]:
    rows = ranking.aggregate(load_runs(root), ACC, higher_is_better=True)
    return [line for line in ranking.summarize(rows, ACC, True) if "formatted" in line]


def chat(template: object = True, multiturn: bool = True, system: str | None = None) -> dict:
    """A record's chat settings, as ``ChatFormat.settings`` writes them."""
    keys = ("apply_chat_template", "fewshot_as_multiturn", "system_instruction")
    return dict(zip(keys, (template, bool(template) and multiturn, system), strict=True))


def test_eval_metrics_of_differently_formatted_prompts_get_a_warning(tmp_path: Path) -> None:
    """One run's evals during training used plain prompts, the other's ``lmlab evaluate
    apply_chat_template=true`` record the chat template, on the same items and shots: ranked
    by that task's metric, the summary says the formats differ, naming them and the variants
    (an instruct model's chat-formatted score beat a plain one unsaid). A record from before
    the chat settings is plain; shots as turns differ only where there are shots; a system
    instruction, or another of several named templates, is another format."""
    root = two_runs(tmp_path)
    n_samples = {TASK: {"original": 300, "effective": 20}}
    update_results(root / "0", eval_n_samples=n_samples, eval_n_shot={TASK: 0}, **{ACC: 0.40})
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=0, chat=chat())
    (warning,) = format_warnings(root)
    assert warning == (
        f"warning: the runs scored {TASK} with differently formatted prompts (chat template: "
        "norm_placement=post, activation=relu; plain prompts: norm_placement=pre, "
        f"activation=gelu), so {ACC} compares the formats as much as the variants; evaluate "
        "every run alike (lmlab evaluate apply_chat_template=, chat_template=, "
        "fewshot_as_multiturn=, system_instruction=; eval.apply_chat_template= and the others "
        "during training)"
    )
    assert item_warnings(root) == [] and shot_warnings(root) == []
    plain = chat(template=False)
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=0, chat=plain)
    assert format_warnings(root) == []
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=0)  # older record
    assert format_warnings(root) == []

    # both by lmlab evaluate in the chat template: 0-shot, shots as turns or not is one format
    write_record(root / "0", MAX_STEPS, 0.40, digest=None, items=20, shots=0, chat=chat())
    one_turn = chat(multiturn=False)
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=0, chat=one_turn)
    assert format_warnings(root) == []
    write_record(root / "0", MAX_STEPS, 0.40, digest=None, items=20, shots=3, chat=chat())
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=3, chat=one_turn)
    assert (
        "(chat template: norm_placement=post, activation=relu; chat template, shots as "
        in (format_warnings(root)[0])
    )
    system = "You are a careful assistant who answers every question in one word."
    write_record(
        root / "1", MAX_STEPS, 0.50, digest=None, shots=3, items=20, chat=chat(system=system)
    )
    assert (
        "chat template, shots as turns, system instruction 'You are a careful assistant who "
        "answe'... (67 characters): norm_placement=post" in format_warnings(root)[0]
    )
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=3, chat=chat("default"))
    write_record(root / "0", MAX_STEPS, 0.40, digest=None, items=20, shots=3, chat=chat())
    assert format_warnings(root) == []  # the default template, named or not
    named = chat(template="tool_use")
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=3, chat=named)
    assert (
        "chat template 'tool_use', shots as turns: norm_placement=post"
        in (format_warnings(root)[0])
    )


def test_eval_settings_are_not_knobs(tmp_path: Path) -> None:
    """``eval.tasks``, ``eval.limit``, ``eval.every_n_steps`` (and the eval callback's copy
    of them) say what measured a run, not what it trained: never knob columns nor in the
    winner's label, from the overrides or from config.yaml."""
    root = tmp_path / "multirun"
    for i, (model, evals) in enumerate(
        [("gpt_tiny", ["eval.tasks=[stdlib_nextline]", "eval.limit=20"]), ("t5_tiny", [])]
    ):
        overrides = [f"model={model}", *evals, f"eval.every_n_steps={2 * i}", "seed=1"]
        config = {
            "model": {"name": model},
            "eval": {"tasks": [TASK] if evals else [], "limit": 20 if evals else None},
            "callbacks": {"eval": {"limit": 20 if evals else None}},
        }
        write_job(root / str(i), overrides, config, results_for(3.0 + i, 10.0, 1, str(i)), None)
    runs = load_runs(root)
    assert mrun.varying_knobs(runs) == ["model"]
    rows = ranking.aggregate(runs, "val_loss")
    assert ranking.summarize(rows, "val_loss")[0].startswith("winner: model=gpt_tiny (")
    for job in ("0", "1"):  # the config alone
        (root / job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=1"]))
    assert mrun.varying_knobs(load_runs(root)) == ["model.name"]


# --------------------------------------------------------------------------- the run's end


def test_a_run_records_its_final_digest_and_failed_evals(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose evals fail (the harness raises, as it did out of memory) completes and
    says so in results.json (``eval_failures``: step and error, one line); ``compare``
    ranked by that eval names them. results.json holds its final checkpoint's
    ``model_digest``, the one ``lmlab evaluate`` records for that file, and for a copy of
    the folder: another model's record of that step put into the copy is skipped."""
    from lmlab.infer import harness
    from lmlab.infer.pretrained import load

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: not enough\nx")

    monkeypatch.setattr(harness, "run_tasks", out_of_memory)
    run_dir = tmp_path / "runs" / "a"
    overrides = [*smoke.SMOKE, "logger=csv", f"eval.tasks=[{TASK}]", "eval.limit=3"]
    train(compose_train([*overrides, "callbacks.sample=null"], run_dir, cache_dir))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    error = "RuntimeError: [enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: not enough"
    assert results["eval_failures"] == [{"step": 4, "tasks": [TASK], "error": error}]
    assert not [key for key in results if key.startswith("eval/")]
    with pytest.raises(CompareError) as refused:
        compare(tmp_path / "runs", ACC, out=tmp_path / "out")
    assert "; the evals during training failed in a (results.json eval_failures; a, step 4: " in (
        str(refused.value)
    )

    digest = results["model_digest"]
    assert load(run_dir / "checkpoints" / "last.ckpt").digest == digest
    copy = tmp_path / "copies" / "b"
    shutil.copytree(run_dir, copy)
    assert load(copy / "checkpoints" / "last.ckpt").digest == digest
    write_record(copy, 4, 0.31, digest=digest)  # the run's own evaluation, in the copy
    (run,) = load_runs(tmp_path / "copies")
    assert mrun.run_value(run, ACC) == 0.31
    write_record(copy, 4, 0.99, digest="f" * 32)  # another model's, copied over it
    (run,) = load_runs(tmp_path / "copies")
    assert mrun.run_value(run, ACC) is None and run.skipped_evals


def test_a_failure_is_named_for_the_tasks_it_was_scoring(tmp_path: Path) -> None:
    """An ``eval_failures`` entry names the tasks its evals were scoring: compare ranked by
    another task's metric does not blame it; ranked by its task's, it names it. An entry of
    an older record, without tasks, counts for every task."""
    root = two_runs(tmp_path)
    update_results(root / "1", **{ACC: 0.5})
    failed = {"step": 2, "tasks": ["other_task"], "error": "RuntimeError: out of memory"}
    update_results(root / "0", eval_failures=[failed])
    assert mrun.eval_failures(load_runs(root), TASK) == ""
    update_results(root / "0", eval_failures=[failed | {"tasks": ["other_task", TASK]}])
    said = "; the evals during training failed in 0 (results.json eval_failures; 0, step 2: "
    assert mrun.eval_failures(load_runs(root), TASK).startswith(said)
    update_results(root / "0", eval_failures=[{"step": 2, "error": "RuntimeError: x"}])
    assert mrun.eval_failures(load_runs(root), TASK).startswith(said)


def test_a_resumed_runs_results_keep_the_earlier_processes_eval_failures(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evals at steps 2 and 4 failed, and the run completed; extended to 6 steps with
    evals that work, its results.json listed no failure (each process counted its own), and
    did not say why step 2 has no eval metrics. The failures are kept in the checkpoint; one
    of a step evaluated again is replaced by that step's outcome (the resumed run evaluates
    step 4's weights again: evals were due there)."""
    from lmlab.infer import harness

    run_tasks = harness.run_tasks

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    overrides = [*smoke.SMOKE, "logger=csv", f"eval.tasks=[{TASK}]", "eval.limit=3"]
    overrides += ["eval.every_n_steps=2", "callbacks.sample=null"]
    with monkeypatch.context() as patch:
        patch.setattr(harness, "run_tasks", fails)
        train(compose_train(overrides, tmp_path, cache_dir))
    failed = [{"step": s, "tasks": [TASK], "error": "RuntimeError: out of memory"} for s in (2, 4)]
    assert json.loads((tmp_path / "results.json").read_text())["eval_failures"] == failed
    extended = [*overrides, "trainer.max_steps=6", "resume=true"]
    train(compose_train(extended, tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and results["global_step"] == 6
    assert results["eval_failures"] == failed[:1] and results[f"eval/{TASK}/acc"] is not None
    with open(tmp_path / "csv" / "metrics.csv") as f:
        logged = [int(r["step"]) for r in csv.DictReader(f) if r.get(f"eval/{TASK}/acc")]
    assert logged == [3, 5]  # steps 4 and 6, logged at N - 1
    assert harness.run_tasks is run_tasks


def test_an_extension_keeps_the_failure_of_its_last_steps_evals(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step's evals run after its checkpoint is saved, so the checkpoint does not
    hold their failure: an extension past a step that is not evaluated again takes it from
    the record (it dropped it)."""
    from lmlab.infer import harness

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    overrides = [*smoke.SMOKE, "logger=csv", f"eval.tasks=[{TASK}]", "eval.limit=3"]
    overrides += ["callbacks.sample=null"]
    with monkeypatch.context() as patch:
        patch.setattr(harness, "run_tasks", fails)
        train(compose_train(overrides, tmp_path, cache_dir))
    failed = [{"step": 4, "tasks": [TASK], "error": "RuntimeError: out of memory"}]
    assert json.loads((tmp_path / "results.json").read_text())["eval_failures"] == failed
    train(compose_train([*overrides, "trainer.max_steps=6", "resume=true"], tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["eval_failures"] == failed and results[f"eval/{TASK}/acc"] is not None


def test_a_failed_last_eval_leaves_no_earlier_steps_metrics_in_the_record(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evals at step 2 scored and those of the last step failed (or were cut by a
    Ctrl-C): results.json held step 2's metrics as the final model's, with nothing saying so,
    and compare ranked the run by them (or by step 2's row of metrics.csv). Now it holds none,
    ``eval_failures`` says why, and compare names the run; metrics.csv keeps step 2's row."""
    from lmlab.infer import harness

    run_tasks = harness.run_tasks
    calls: list[int] = []

    def fails_second(*args: object, **kwargs: object) -> dict:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return run_tasks(*args, **kwargs)

    overrides = [*smoke.SMOKE, "logger=csv", f"eval.tasks=[{TASK}]", "eval.limit=3"]
    overrides += ["eval.every_n_steps=2", "callbacks.sample=null"]
    run_dir = tmp_path / "runs" / "a"
    monkeypatch.setattr(harness, "run_tasks", fails_second)
    train(compose_train(overrides, run_dir, cache_dir))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and len(calls) == 2
    assert [f["step"] for f in results["eval_failures"]] == [4]
    assert not [key for key in results if key.startswith("eval/")]
    assert "eval_n_samples" not in results
    with open(run_dir / "csv" / "metrics.csv") as f:
        logged = [int(r["step"]) for r in csv.DictReader(f) if r.get(f"eval/{TASK}/acc")]
    assert logged == [1]  # step 2's, logged at N - 1
    (run,) = load_runs(tmp_path / "runs")
    assert mrun.run_value(run, f"eval/{TASK}/acc") is None  # not step 2's row of metrics.csv
    (note,) = eval_notes([run], f"eval/{TASK}/acc")
    assert note.startswith(f"note: no eval/{TASK}/acc for some runs; the evals during training ")
    assert "a, step 4: RuntimeError: out of memory" in note


def test_a_run_records_the_item_counts_of_its_evals(tmp_path: Path, cache_dir: Path) -> None:
    """The evals during training keep each task's item count and shots in results.json,
    which compare reads to warn of runs scored on different counts or shots."""
    overrides = [*smoke.SMOKE, "logger=csv", f"eval.tasks=[{TASK}]", "eval.limit=3"]
    train(compose_train([*overrides, "callbacks.sample=null"], tmp_path, cache_dir))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["eval_n_samples"] == {TASK: {"original": 300, "effective": 3}}
    assert results["eval_n_shot"] == {TASK: 0}
    assert "eval_failures" not in results and results[f"eval/{TASK}/acc"] is not None


# --------------------------------------------------------------------------- run directories


def test_a_folder_holding_eval_records_holds_an_earlier_run(tmp_path: Path) -> None:
    """``lmlab evaluate``'s records are a run's: a folder holding them holds a run (an empty
    ``eval/`` does not)."""
    (tmp_path / "eval").mkdir()
    assert not holds_run(tmp_path)
    write_record(tmp_path, 4, 0.3, digest="a" * 32)
    assert holds_run(tmp_path)


def test_a_new_run_into_a_folder_of_eval_records_is_refused_a_resume_is_not(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A new run into a folder that holds only another run's ``eval/`` records is refused
    before it writes anything (compare would rank it by that other model's evaluation), with
    resume=auto too, and without the hint that resume=auto starts it again; an
    evaluated run extended with ``resume=true`` goes on (its ``eval/`` is its own)."""
    run = [*smoke.SMOKE, "logger=csv", "callbacks.sample=null"]
    stale = tmp_path / "stale"
    write_record(stale, 4, 0.3, digest="a" * 32)
    before = sorted(p.relative_to(stale) for p in stale.rglob("*"))
    for extra in ([], ["resume=auto"]):  # auto: nothing of a run to start again either
        with pytest.raises(ConfigError, match=r"already holds an earlier run \(eval/") as e:
            train(compose_train([*run, *extra], stale, cache_dir))
        assert "resume=auto starts it again" not in str(e.value)
        assert sorted(p.relative_to(stale) for p in stale.rglob("*")) == before

    evaluated = tmp_path / "evaluated"
    train(compose_train(run, evaluated, cache_dir))
    write_record(evaluated, 4, 0.3, digest="a" * 32)
    train(compose_train([*run, "trainer.max_steps=6", "resume=true"], evaluated, cache_dir))
    results = json.loads((evaluated / "results.json").read_text())
    assert (results["status"], results["global_step"]) == ("completed", 6)


def test_a_run_resumed_past_its_evaluation_is_ranked_by_it_with_a_note(tmp_path: Path) -> None:
    """``lmlab evaluate`` of step 200, then the run resumed on to 400 (``trainer.max_steps``
    raised) without evals during training: compare ranks it by the step-200 evaluation, the
    only one there is, and now says so, naming the checkpoint to evaluate."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1])
    job = root / "0"
    write_record(job, MAX_STEPS, 0.40, digest=None)
    (run,) = load_runs(root)
    assert eval_notes([run], ACC) == []  # the final step's own evaluation
    update_results(job, global_step=2 * MAX_STEPS)
    (run,) = load_runs(root)
    assert mrun.run_value(run, ACC) == 0.40
    (note,) = eval_notes([run], ACC)
    assert note == (
        f"note: {job}: {ACC} is lmlab evaluate's of step {MAX_STEPS}, but the run trained on "
        f"to step {2 * MAX_STEPS}; evaluate its last checkpoint for the final weights' "
        f"(lmlab evaluate ckpt={job / 'checkpoints' / 'last.ckpt'})"
    )
    rows = ranking.aggregate([run], ACC, higher_is_better=True)
    assert note in ranking.summarize(rows, ACC, True)


def test_evals_during_training_in_the_chat_template_are_compared_by_their_format(
    tmp_path: Path,
) -> None:
    """results.json's ``eval_prompts`` (``eval.apply_chat_template=true``) is the format of
    the evals during training: against another run's plain ``lmlab evaluate`` record, the
    summary warns; against a record in the same template, it does not."""
    root = two_runs(tmp_path)
    n_samples = {TASK: {"original": 300, "effective": 20}}
    update_results(
        root / "0",
        eval_n_samples=n_samples,
        eval_n_shot={TASK: 0},
        eval_prompts=chat(system="Be brief."),
        **{ACC: 0.40},
    )
    plain = chat(template=False)
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=0, chat=plain)
    (warning,) = format_warnings(root)
    assert (
        "(chat template, system instruction 'Be brief.': norm_placement=pre, activation=gelu; "
        "plain prompts: norm_placement=post, activation=relu)" in warning
    )
    same = chat(system="Be brief.")
    write_record(root / "1", MAX_STEPS, 0.50, digest=None, items=20, shots=0, chat=same)
    assert format_warnings(root) == []


def test_runs_that_differ_only_in_how_they_were_evaluated_are_warned_of(
    tmp_path: Path,
) -> None:
    """A sweep over an eval setting alone (``-m eval.apply_chat_template=true,false``: eval
    settings are no knobs) gives two runs of one variant and seed, the second counted as a
    copy: ranked by the task's metric, the summary still says their formats differ (the copy
    was left out of the check, and the plain score dropped without a word)."""
    root = make_multirun(tmp_path / "multirun", JOBS[:1] + JOBS[:1])
    for job, prompts in ((root / "0", chat()), (root / "1", chat(template=False))):
        update_results(job, eval_n_shot={TASK: 0}, eval_prompts=prompts, **{ACC: 0.40})
    (warning,) = format_warnings(root)
    assert "(chat template: all runs; plain prompts: all runs)" in warning
