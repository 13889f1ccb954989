"""Experiment loggers from ``conf/logger``: W&B (offline unless a key is configured and its
server answers) and CSV (``CSVLogger``: one history per run directory, across resumes)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf

from lmlab.config import flatten, redact
from lmlab.config.asked import as_typed, asked_fields
from lmlab.files import SWEEP_RECORD, write_text
from lmlab.train.wandb_mode import wandb_disabled, wandb_offline
from lmlab.train.wandb_run import (
    in_wandb_sweep,
    record_wandb_name,
    record_wandb_place,
    recorded_wandb_name,
    start_wandb,
    wandb_may_fail,
    wandb_place,
    wandb_run_id,
)

log = logging.getLogger(__name__)


def _multirun_dir() -> Path | None:
    hc = HydraConfig.get()
    return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def sweeping(overrides: list[str]) -> set[str]:
    """The keys (or groups) of the ``overrides`` that sweep, as Hydra's parser reads them: a
    comma list, ``range(3)``, ``glob(gpt_*)``, ``choice(a,b)``, ``interval(0,1)``. A list
    (``[a,b]``) or a dict (``{d_model:32,n_layers:1}``) is one value, its commas aside."""
    parser = OverridesParser.create()
    return {o.key_or_group for o in parser.parse_overrides(overrides) if o.is_sweep_override()}


def swept_keys() -> set[str]:
    """Keys a multirun varies: the sweeper's ``params`` and the command line's sweeps
    (``sweeping``, read from the sweep's ``multirun.yaml``, which Hydra writes before any
    job)."""
    hc = HydraConfig.get()
    keys = set((hc.sweeper.get("params") or {}).keys())
    multirun_yaml = _multirun_dir() / SWEEP_RECORD
    if multirun_yaml.exists():
        keys |= sweeping(as_typed(OmegaConf.load(multirun_yaml).hydra.overrides.task))
    return {k.lstrip("+~") for k in keys}


def run_name(cfg: DictConfig) -> str:
    """A single run: its overrides (``model=gpt_medium,+experiment=prenorm``) or ``default``.
    A multirun job: only the overrides that vary within the sweep (``model.activation=gelu``)."""
    if not HydraConfig.initialized():
        return "default"
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        varying = swept_keys()
        parts = [
            o for o in as_typed(hc.overrides.task) if o.split("=", 1)[0].lstrip("+~") in varying
        ]
        return ",".join(parts) or f"job{hc.job.num}"
    return hc.job.override_dirname or "default"


def kept_run_name(cfg: DictConfig, found: Any, checkpointed: bool) -> str:
    """results.json's ``run_name``: ``run_name(cfg)``, or on a resume of the run whose
    checkpoints the folder holds (``checkpointed``) the name in its record (``found``, as
    read: completed, stopped, or failed or killed after a checkpoint), as its W&B run keeps
    its own (``recorded_wandb_name``): an extension's new ``trainer.max_steps``, or a smaller
    batch after an out-of-memory failure, would rename it. A record from a run refused before
    its first checkpoint names no run that continues."""
    resumes = cfg.get("resume") and checkpointed and isinstance(found, dict)
    name = found.get("run_name") if resumes else None
    return name if isinstance(name, str) and name else run_name(cfg)


def run_group() -> str | None:
    """One W&B group per multirun: the sweep's name (``+sweeps=NAME``) and its timestamp."""
    if not HydraConfig.initialized() or _multirun_dir() is None:
        return None
    sweep = HydraConfig.get().runtime.choices.get("sweeps") or "multirun"
    return f"{sweep}-{'_'.join(_multirun_dir().parts[-2:])}"


# ModelConfig's fields that set the size a preset names (its width, depth, feed-forward and
# experts); the vocabulary (the tokenizer's), the context and the heads' layout leave it
SHAPE_FIELDS = {"d_model", "n_layers", "n_decoder_layers", "d_head", "d_ff", "ffn_multiple_of"}
SHAPE_FIELDS |= {"moe"}


def config_choices() -> dict[str, str]:
    """The option each of lmlab's config groups took (``model: gpt_tiny``, ``experiment:
    llama``, ``sweeps: recipes``; Hydra's own groups left out). The resolved config holds a
    group's fields, never its name: logged as ``choices.<group>``, a sweep over a group
    (``+sweeps=recipes``'s ``+experiment``, ``model=gpt_tiny,gpt_small``) has its swept value
    in a config column a dashboard groups and plots by, as a field's sweep has."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {g: str(c) for g, c in choices.items() if c is not None and not g.startswith("hydra/")}


def run_tags(cfg: DictConfig) -> list[str]:
    """Tags from the config choices: family, size, the model knobs, experiment and sweep. The
    size is the preset's (``size:tiny`` for ``model=gpt_tiny``), or ``size:custom`` where the
    command line or a delta file asks for a field of the model's shape (``model.d_model=512``,
    an isoflop sweep's sizes, ``+experiment=mixtral``'s experts: ``asked_fields``): the
    config's ``plan.params`` holds the count."""
    model = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    knobs = ("family", "norm_placement", "norm", "activation", "positional")
    tags = [f"{k}:{model[k]}" for k in knobs]
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        choices = config_choices()
        preset = choices.get("model") or ""
        reshaped = bool(set(asked_fields(as_typed(hc.overrides.task), "model")) & SHAPE_FIELDS)
        tags.append(f"size:{'custom' if reshaped else preset.split('_', 1)[-1]}")
        tags += [f"{g}:{choices[g]}" for g in ("experiment", "sweeps") if choices.get(g)]
    return tags


def write_rows(path: Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    """Write a CSV file atomically (a temporary file renamed over ``path``): a kill while the
    history is rewritten leaves the old history, never half of it."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def log_step(global_step: int) -> int:
    """Where the weights after ``global_step`` optimizer steps are on Lightning's logging axis
    (``metrics.csv``'s ``step``, W&B's ``trainer/global_step``). Lightning logs a batch's
    metrics, and the validation that follows it, with the number of batches that stepped
    before that batch (it counts the batch once the batch is over): step N's train row and
    the validation of its weights carry N - 1, and evals of those weights go there too.
    Worked out here, not read from Lightning's (private) counter: at the start of a run
    resumed from a checkpoint saved at a stop, which Lightning saves after counting the
    batch, the counter reads N where the stopped run logged those weights at N - 1."""
    return global_step - 1


def ends_run(steps_taken: int, max_steps: int) -> bool:
    """Whether ``steps_taken`` optimizer steps complete a run of ``max_steps`` (``trainer.
    max_steps``; none do in a run bounded by epochs, -1): its last step is logged and
    evaluated though it is no logging or eval step."""
    return max_steps > 0 and steps_taken >= max_steps


def holds_evals(row: dict[str, str]) -> bool:
    """Whether a ``metrics.csv`` row holds evals (``eval/<task>/<metric>``)."""
    return any(key.startswith("eval/") and value for key, value in row.items())


class HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer deletes ``metrics.csv`` when it starts. This one keeps the rows
    of the steps before ``resume_step`` (the step a resumed run continues from) and drops the
    rest, which the resumed run logs again: one history, no step twice. The rows of the
    checkpoint's own weights carry the step before (``log_step``): of those, with
    ``reevaluates`` (evals are due at that step: the resumed run runs them again,
    ``EvalTasks``) its evals go, and with ``revalidates`` (no step left to train: the resumed
    run validates them again) its validation too. A run extended past its end, where the old
    last step is no longer due, keeps that step's evals. A fresh run (``resume_step=0``)
    starts an empty file. A row cut short by a full disk or a kill is dropped."""

    def __init__(
        self,
        log_dir: str,
        resume_step: int = 0,
        revalidates: bool = False,
        reevaluates: bool = True,
    ) -> None:
        self.resume_step, self.revalidates = resume_step, revalidates
        self.reevaluates = reevaluates
        super().__init__(log_dir)

    def keeps(self, row: dict[str, str]) -> bool:
        if None in row or None in row.values() or not (row.get("step") or "").isdigit():
            return False  # a row cut short (a full disk, a kill mid-write): not a step's
        step = int(row["step"])
        if step == log_step(self.resume_step) and (
            (self.reevaluates and holds_evals(row)) or (self.revalidates and row.get("val/loss"))
        ):
            return False
        return step < self.resume_step

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            kept = [row for row in reader if self.keeps(row)]
            fieldnames = list(reader.fieldnames or [])
        if not kept:
            path.unlink()
            return
        self.metrics_keys = fieldnames  # the header new rows are appended under
        write_rows(path, fieldnames, kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        write_rows(Path(self.metrics_file_path), fieldnames, rows)


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's ``CSVLogger`` writing through ``HistoryWriter``: a resumed run appends to
    the run directory's ``csv/metrics.csv``. ``resume_step`` is the resumed checkpoint's step
    (``build_loggers`` sets it, and what the resumed run does again at that step)."""

    def __init__(
        self,
        *args: Any,
        resume_step: int = 0,
        revalidates: bool = False,
        reevaluates: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step, self.revalidates = resume_step, revalidates
        self.reevaluates = reevaluates

    @property
    @rank_zero_experiment
    def experiment(self) -> HistoryWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = HistoryWriter(
                self.log_dir, self.resume_step, self.revalidates, self.reevaluates
            )
        return self._experiment


def uses_wandb(cfg: DictConfig) -> bool:
    """Whether the run logs to W&B: a ``logger.wandb`` entry that is not turned off (null),
    and W&B not turned off by the user (``WANDB_MODE=disabled``, ``wandb disabled``:
    ``wandb_disabled``)."""
    return (cfg.get("logger") or {}).get("wandb") is not None and not wandb_disabled()


def build_loggers(
    cfg: DictConfig,
    out_dir: Path,
    resume_step: int = 0,
    revalidates: bool = False,
    reevaluates: bool = True,
    plan: dict[str, Any] | None = None,
) -> list[Logger]:
    """Instantiate ``cfg.logger``'s entries (``logger.<name>=null`` turns one off) and log the
    resolved config with dotted keys, the config groups' options as ``choices.<group>``
    (``config_choices``), and
    the run's frozen ``plan`` (``plan.json``) as ``plan.*``: the steps, accumulation, precision
    and vocabulary the run trains with, where a budget, the global batch or the data derived
    them and the config's own fields (``trainer.max_steps``, ``trainer.accumulate_grad_batches``)
    were not used. A run resumed from step ``resume_step`` continues the CSV history from there
    (``revalidates``, ``reevaluates``: ``HistoryWriter``)."""
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None:  # logger.wandb=null: that one off, as a callback's null
            continue
        if name == "wandb" and not uses_wandb(cfg):
            log.info("W&B is disabled (WANDB_MODE=disabled or `wandb disabled`): no W&B run")
            continue
        if name == "wandb":
            wandb_name = lcfg.get("name") or recorded_wandb_name(out_dir) or run_name(cfg)
            run_id = wandb_run_id(out_dir)
            record_wandb_name(out_dir, wandb_name)
            # a sweep agent gives the run its id, project and entity (W&B ignores an id
            # passed, with a warning); otherwise the id, and where the run was created
            where: dict[str, Any] = {}
            if not in_wandb_sweep():
                where = {"id": run_id} | wandb_place(out_dir, lcfg.project, lcfg.entity)
                if (where["project"], where["entity"]) != (lcfg.project, lcfg.entity):
                    path = "/".join(v for v in (where["entity"], where["project"]) if v)
                    log.info("W&B: run %s continues in %s, where it was created", run_id, path)
            args = dict(
                name=wandb_name,
                offline=wandb_offline(lcfg.get("offline"), lcfg.get("save_dir")),
                resume="allow",
                group=lcfg.get("group") or run_group(),
                tags=list(lcfg.get("tags") or []) + run_tags(cfg),
                **where,
            )
            loggers.append(start_wandb(lcfg, args))
        elif issubclass(get_class(lcfg._target_), CSVLogger):
            loggers.append(
                instantiate(
                    lcfg,
                    resume_step=resume_step,
                    revalidates=revalidates,
                    reevaluates=reevaluates,
                )
            )
        else:
            loggers.append(instantiate(lcfg))
    flat = flatten(OmegaConf.to_container(cfg, resolve=True)) | flatten(plan or {}, "plan")
    flat = redact(flat | flatten(config_choices(), "choices"))
    for lg in loggers:
        lg.log_hyperparams(flat)  # W&B's run starts here (rank 0)
        if type(lg).__name__ == "WandbLogger":
            with wandb_may_fail("recording where the W&B run is"):  # W&B lost: its warning
                record_wandb_place(out_dir, lg.experiment)
    return loggers


def log_param_table(loggers: list[Logger], counts: dict[str, int], step: int = 0) -> None:
    """The parameter table (embeddings, attention, feed-forward, norms, head, total,
    non-embedding) as a W&B table named ``parameters``, at ``trainer/global_step`` ``step``:
    a run resumed from step N logs it at N, where its history goes on (left to W&B, an offline
    resume would put it back at 0, the last step a new process knows)."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            rows = [[kind, n] for kind, n in counts.items()]
            lg.log_table(key="parameters", columns=["kind", "count"], data=rows, step=step)
