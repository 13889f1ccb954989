"""Evaluate a checkpoint on lm-evaluation-harness tasks.

    python src/evaluate.py ckpt=<run>/checkpoints/last.ckpt                  # the shipped tasks
    python src/evaluate.py ckpt=<file> tasks=stdlib_nextline,stdlib_cloze limit=100
    python src/evaluate.py ckpt=<file> tasks=hellaswag,lambada_openai       # online: hub tasks
    python src/evaluate.py ckpt=<file> include_path=my_tasks tasks=my_task  # your own tasks
    python src/evaluate.py ckpt=<instruct model> apply_chat_template=true   # in its template

With no ``tasks=``, the offline tasks shipped with lmlab run (``stdlib_nextline``,
``stdlib_cloze``, ``stdlib_perplexity``); ``include_path=`` adds a folder of your own lm-eval
task YAML files (``lmlab.infer.task_folders``), whose tasks ``tasks=`` then names. Results are
printed as the harness's table, written to ``<run dir>/eval/step<N>.json`` (a checkpoint
outside a run's ``checkpoints/`` folder: an ``eval/`` folder beside it; ``out=`` to choose) and
logged to the run's W&B run when it has one (``wandb=false`` to skip). The device, the
checkpoint's path and the dtype, then the task folder, task names and a hub task's dataset, are
checked before the checkpoint is read and the harness imported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from lmlab.analysis.run_files import read_run_config
from lmlab.cli.args import parse
from lmlab.config import MAX_GEN_TOKS, DataConfig, Source
from lmlab.config.local_paths import source_name
from lmlab.errors import ConfigError


@dataclass
class EvaluateConfig:
    ckpt: str = MISSING
    tasks: str | None = None  # a,b or [a,b]; default: every shipped offline task
    include_path: str | None = None  # a folder of your own lm-eval task YAML files
    limit: int | None = None  # at most this many items per task
    num_fewshot: int | None = None  # default: each task's own (0 for the shipped ones)
    batch_size: int = 16
    max_gen_toks: int = MAX_GEN_TOKS  # generate_until's default length, when a task sets none
    bootstrap_iters: int = 1000  # resamples for the standard errors that need them
    device: str = "cpu"
    dtype: str = "fp32"  # fp32 | bf16 | fp16 | auto (as stored)
    tokenizer: str | None = None  # a tokenizer.json, for checkpoints that carry none
    out: str | None = None  # default: <run dir>/eval/step<N>.json
    wandb: bool = True  # log to the checkpoint's W&B run, when its run directory has one
    apply_chat_template: bool = False  # requests in the model's declared chat template
    chat_template: str | None = None  # of several named templates, the one (default: default)
    fewshot_as_multiturn: bool = True  # with the template: each few-shot example a turn
    system_instruction: str | None = None  # with the template: the chat's system turn

    def __post_init__(self) -> None:
        """Every value is checked here, before tasks or checkpoint are read."""
        for name in ("batch_size", "max_gen_toks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit={self.limit} must be >= 1 (or null: every item)")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"num_fewshot={self.num_fewshot} must be >= 0 (or null)")
        if self.bootstrap_iters < 0:
            raise ConfigError(f"bootstrap_iters={self.bootstrap_iters} must be >= 0")
        for name in ("system_instruction", "chat_template"):
            if getattr(self, name) is not None and not self.apply_chat_template:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is of the chat format; allowed with "
                    "apply_chat_template=true"
                )


def main(argv: list[str]) -> int | None:
    cfg = parse(EvaluateConfig, argv)
    from lmlab.infer import eval_records, harness
    from lmlab.infer.declared import check_declares_chat
    from lmlab.infer.pretrained import check_source, load

    names = harness.parse_tasks(cfg.tasks)
    harness.check_fewshot(names, cfg.num_fewshot)
    if cfg.out:
        # nothing there, or an eval record: else refused
        eval_records.read_eval_record(cfg.out)  # as typed: out=dir/ names a folder
    check_source(Path(cfg.ckpt), cfg.device, cfg.dtype)  # before the model and lm-eval imports
    folders = harness.checked_folders(cfg.include_path, "include_path")  # lm-eval indexes it
    # before the checkpoint: a bad or unreachable task fails fast
    harness.check_tasks(names, folders=folders)
    trained_on = trained_data(Path(cfg.ckpt))
    for line in harness.trained_items(names, trained_on) if trained_on else ():
        logging.getLogger(__name__).warning("%s", line)
    chat = None
    if cfg.apply_chat_template:  # the checkpoint declares a template: before its weights
        template = cfg.chat_template or True
        chat = harness.ChatFormat(template, cfg.fewshot_as_multiturn, cfg.system_instruction)
        check_declares_chat(Path(cfg.ckpt), cfg.chat_template)
    pre = load(cfg.ckpt, cfg.device, cfg.dtype, cfg.tokenizer)
    # before any task runs: a generating task's refusal came after the others had run
    harness.check_generation(names, pre.cfg, cfg.max_gen_toks, "max_gen_toks", folders)
    from lmlab.infer.checkpoint import run_dir_of
    from lmlab.infer.evaluate import LmlabLM  # imports lm-eval: after every check

    path = Path(cfg.out) if cfg.out else eval_records.eval_path(pre.path, pre.global_step)
    try:  # before any task runs
        eval_records.check_record(path, str(pre.path), pre.global_step, digest=pre.digest)
    except ConfigError as err:
        if cfg.out:
            raise
        raise ConfigError(
            f"{err} (no out= was given: this is its default, the checkpoint's record; out=<a "
            "new file> writes elsewhere)"
        ) from None
    lm = LmlabLM(pre, cfg.batch_size, max_gen_toks=cfg.max_gen_toks, progress=True)
    results = harness.run_tasks(
        lm,
        names,
        cfg.limit,
        cfg.num_fewshot,
        cfg.bootstrap_iters,
        progress=True,
        folders=folders,
        chat=chat,
    )
    print(eval_records.table(results))
    # not as typed: the record is read from anywhere, also once the folder the command ran
    # in is gone (``<cwd>/../run/...`` named a file only while <cwd> existed)
    scored = source_name(pre.path)
    record = eval_records.eval_record(results, scored, pre.global_step, pre.digest)
    print(f"results: {eval_records.write_record(path, record)}")
    if cfg.wandb:
        run_dir = run_dir_of(pre.path)
        wandb_run = log_to_wandb(run_dir, record["metrics"], pre.global_step)
        if wandb_run:
            print(f"logged to W&B run {wandb_run}")


def trained_data(ckpt: Path) -> DataConfig | None:
    """The corpus a language model in a run's ``checkpoints/`` trained on, from the config
    the run saved (``read_run_config``: source, ``val_fraction``, ``max_bytes``: what decides
    the files held out); None where it cannot be told (a loose or converted checkpoint, a
    fine-tune)."""
    from lmlab.infer.checkpoint import run_dir_of

    saved, _ = read_run_config(run_dir_of(ckpt))
    if not saved or (saved.get("task") or {}).get("kind", "lm") != "lm":
        return None
    try:
        data, default = saved.get("data") or {}, DataConfig()
        return DataConfig(
            source=Source(data.get("source", default.source)),
            val_fraction=float(data.get("val_fraction", default.val_fraction)),
            max_bytes=data.get("max_bytes", default.max_bytes),
        )
    except (ValueError, TypeError, AttributeError, ConfigError):
        return None


def log_to_wandb(run_dir: Path, metrics: dict[str, float], step: int | None) -> str | None:
    """Log ``metrics`` into the W&B run of ``run_dir`` (its ``wandb_id``, in the project and
    entity where it was created: its ``wandb_project``, else its ``.hydra/config.yaml``), on
    the ``trainer/global_step`` axis Lightning's logger uses, where training logged the
    validation and evals of the checkpoint's weights (``log_step``: N - 1 for the checkpoint
    of step N), and into its summary. Offline unless credentials exist, as in training; an
    offline run is uploaded with ``wandb sync <run dir>/wandb/offline-run-*``. The run's id is
    the one a resume reopens (``recorded_wandb_id``: ``wandb_id``, else results.json's).
    Returns the run id, or None when the run directory has no W&B run or W&B is disabled
    (``wandb_disabled``)."""
    from lmlab.files import RESULTS, read_record

    if not (run_dir / "wandb_id").exists() and not read_record(run_dir / RESULTS).get("wandb_id"):
        return None  # no W&B run: not worth Lightning's import (the W&B helpers'), ~4 s
    from lmlab.train.wandb_mode import wandb_disabled, wandb_offline
    from lmlab.train.wandb_run import init_wandb, recorded_wandb_id, wandb_place

    run_id = recorded_wandb_id(run_dir)
    if run_id is None or wandb_disabled():  # WANDB_MODE=disabled: the user's, no W&B run
        return None
    import wandb

    from lmlab.train.loggers import log_step

    wb = ((read_run_config(run_dir)[0] or {}).get("logger") or {}).get("wandb") or {}
    run = init_wandb(
        wandb_offline(wb.get("offline"), run_dir),
        run_dir,
        **wandb_place(run_dir, wb.get("project") or "lmlab", wb.get("entity")),
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        settings=wandb.Settings(silent=True),
    )
    run.define_metric("trainer/global_step")
    run.define_metric("eval/*", step_metric="trainer/global_step")
    run.log({**metrics, "trainer/global_step": log_step(step) if step else 0})
    run.summary.update(metrics)
    run.finish()
    return run.id
