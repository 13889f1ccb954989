"""Tasks for ``LmlabLM``: find them, check them and run them (``lmlab.infer.eval_records``
records what they gave).

Tasks are lm-eval's: the ones shipped in ``infer/tasks/`` (YAML + JSONL made by
``scripts/make_eval_tasks.py``, offline), the user's own in a folder of task YAML files
(``folders``: ``include_path``, ``lmlab.infer.task_folders``) and, for users who are online,
any task the harness knows (hellaswag, lambada_openai, arc_easy, ...), whose dataset it
downloads. Names are checked
and datasets fetched before a model is loaded or a run trains, so an unknown name or a hub task
offline fails at once, naming the task. Results become flat metrics, ``eval/<task>/<metric>``,
the names every logger and ``lmlab compare`` use.

lm-eval is imported inside the functions: importing this module costs nothing, so the
training command line starts as fast without evals as before.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from lmlab.config import DataConfig, Family, ModelConfig, Source
from lmlab.config.prompts import CHAT_SETTINGS
from lmlab.data.hub import hub_reachable, offline_hub
from lmlab.data.sources import load_documents
from lmlab.data.splits import trained_documents
from lmlab.errors import ConfigError, first_line
from lmlab.infer import task_folders
from lmlab.infer.gen_kwargs import checked_gen_kwargs
from lmlab.infer.harness_env import kept_random_state, quiet_harness

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_DATA = DataConfig()  # the corpus settings the shipped tasks are held out of


# family -> how the harness treats it (``LmlabLM.backend``): only decoders and encoder-decoders
# give the probability of a continuation; BERT has none
BACKENDS = {Family.gpt: "causal", Family.t5: "seq2seq"}


def check_family(family: Family, what: str) -> None:
    """Only the families with a ``BACKENDS`` entry (GPT, T5) can be evaluated."""
    if family not in BACKENDS:
        raise ConfigError(
            f"{what}: a bert model is an encoder with a masked-LM head and gives no probability "
            "of a continuation, which every lm-eval request needs; allowed: gpt (causal) or t5 "
            "(encoder-decoder) models"
        )


def shipped_tasks() -> list[str]:
    """The offline tasks that ship with lmlab (their YAML files' names)."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


@functools.cache
def task_manager(hub: bool, folders: tuple[str, ...] = ()) -> Any:
    """lm-eval's ``TaskManager`` over the shipped tasks and the user's task ``folders``, plus
    the harness's own when ``hub`` (indexing its thousands of YAML files takes seconds, so
    only when a name needs them)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *folders], include_defaults=hub)


def needs_hub(names: Sequence[str], folders: tuple[str, ...] = ()) -> bool:
    """Whether a name is neither shipped nor one of the user's ``folders``: the harness's own
    task index is needed (and its dataset, from the hub)."""
    local = set(shipped_tasks()) | (task_folders.tasks_of(folders) if folders else set())
    return any(n not in local for n in names)


def checked_folders(value: str | None, key: str) -> tuple[str, ...]:
    """The user's task folder ``value`` (``key``: ``include_path``), checked
    (``task_folders.checked_folders``): () without one."""
    return task_folders.checked_folders(value, key, set(shipped_tasks()))


def parse_tasks(value: str | Sequence[str] | None) -> list[str]:
    """``a,b,c`` or ``[a,b,c]`` (the list syntax of ``eval.tasks`` in training), or a list,
    as task names; none: every shipped task."""
    if value is None:
        return shipped_tasks()
    listed = isinstance(value, str) and value.startswith("[") and value.endswith("]")
    names = (value[1:-1] if listed else value).split(",") if isinstance(value, str) else value
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError(f"tasks={value!r} names no task; shipped: {', '.join(shipped_tasks())}")
    return names


def check_tasks(names: Sequence[str], where: str = "tasks", folders: tuple[str, ...] = ()) -> bool:
    """Every name is a task whose data can be read now; returns whether the hub's task index
    is needed (``needs_hub``). A task that is not shipped (one of the user's ``folders``, or
    the harness's) is loaded here, a hub task's dataset downloaded (or found in the cache),
    before any model is loaded: offline, that fails naming the task."""
    shipped = set(shipped_tasks())
    others = [n for n in names if n not in shipped]
    if not others:
        return False
    own = task_folders.tasks_of(folders) if folders else set()
    hub = needs_hub(others, folders)
    manager = task_manager(hub, folders)
    unknown = [n for n in others if n not in manager.all_tasks]
    if unknown:
        mine = f", a task of {', '.join(folders)} ({', '.join(sorted(own))})" if folders else ""
        raise ConfigError(
            f"{where}: unknown task {unknown[0]!r}; allowed: the shipped offline tasks "
            f"({', '.join(sorted(shipped))}){mine} or an lm-eval task (`lm_eval ls tasks` lists "
            "them)"
        )
    offline = not hub_reachable()
    for name in others:
        with offline_hub(offline), quiet_harness():
            try:
                _task_generation_args(name, folders)  # loads the task
            except Exception as err:  # the hub raises many types: no network, gated, missing
                error = f"{type(err).__name__}{': ' + first_line(err) if str(err).strip() else ''}"
                if name in own:
                    raise ConfigError(
                        f"{where}: task {name!r} of {', '.join(folders)} could not be loaded "
                        f"({error})"
                    ) from None
                state = "the hub is unreachable (offline) and " if offline else ""
                raise ConfigError(
                    f"{where}: task {name!r} needs its dataset from the Hugging Face hub; "
                    f"{state}it could not be loaded ({error}); the shipped tasks run offline: "
                    f"{', '.join(sorted(shipped))}"
                ) from None
    return hub


@functools.cache
def _task_generation_args(name: str, folders: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Task (or group) ``name``, not a shipped one, loaded (a hub task's dataset downloaded or
    found in the cache): the ``generation_kwargs`` of each of its tasks that generates."""
    tasks = task_manager(needs_hub([name], folders), folders).load([name])["tasks"]
    return {
        task: dict(t.config.generation_kwargs or {})
        for task, t in tasks.items()
        if t.config.output_type == "generate_until"
    }


class _TaskYaml(yaml.SafeLoader):
    """A shipped task's YAML with its ``!function`` tags read as nothing (lm-eval resolves
    them; reading the fields needs no lm-eval import)."""


_TaskYaml.add_multi_constructor("!", lambda loader, suffix, node: None)


def generation_args(
    names: Sequence[str], folders: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """The ``generation_kwargs`` of each task of ``names`` (checked by ``check_tasks``) that
    generates (``output_type: generate_until``; a group's tasks too): a shipped task's from
    its YAML, another's as ``check_tasks`` loaded it."""
    shipped = set(shipped_tasks())
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in shipped:
            out.update(_task_generation_args(name, folders))
            continue
        cfg = yaml.load((TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8"), _TaskYaml)
        if cfg.get("output_type") == "generate_until":
            out[name] = dict(cfg.get("generation_kwargs") or {})
    return out


def check_generation(
    names: Sequence[str],
    cfg: ModelConfig,
    max_gen_toks: int,
    option: str,
    folders: tuple[str, ...] = (),
) -> None:
    """Each generating task of ``names`` asks what lmlab's decoder does and fits the model of
    ``cfg`` at its answers' length (its own, else ``max_gen_toks``, the setting ``option``):
    ``checked_gen_kwargs``, as ``LmlabLM`` checks every request, but before a model is loaded
    or trained, not at each eval."""
    for task, asked in generation_args(names, folders).items():
        checked_gen_kwargs(asked, max_gen_toks, cfg, option, task)


def check_answers(
    names: Sequence[str],
    limit: int | float | None,
    tokenizer: Any,
    cfg: ModelConfig,
    where: str,
    folders: tuple[str, ...] = (),
) -> None:
    """Every loglikelihood request of the tasks ``names`` (their first ``limit`` items, as
    ``run_tasks`` scores them) has a continuation that ``cfg``'s model scores whole, checked
    with ``tokenizer`` and no model (``ContinuationCheck``, ``LmlabLM``'s rule): a training
    run's evals are known to fail once its tokenizer exists, before its first step. The
    requests are built as the harness builds them (each task's ``build_all_requests``)."""
    from lm_eval.evaluator_utils import get_sample_size

    from lmlab.infer.eval_tokens import ContinuationCheck

    hub = needs_hub(names, folders)
    with offline_hub(hub and not hub_reachable()), quiet_harness():
        tasks = task_manager(hub, folders).load(list(names))["tasks"]
        instances = []
        for task in tasks.values():
            task.build_all_requests(limit=get_sample_size(task, limit), rank=0, world_size=1)
            instances += [i for i in task.instances if i.request_type == "loglikelihood"]
        try:
            ContinuationCheck(tokenizer, cfg).loglikelihood(instances, disable_tqdm=True)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def trained_items(names: Sequence[str], data_cfg: DataConfig) -> list[str]:
    """For each shipped task of ``names`` whose items come from files that a run on
    ``data_cfg`` trains on, a line saying so. The tasks are drawn from the files the default
    corpus holds out at its default settings (``scripts/make_eval_tasks.py``); the files held
    out fill a share of the bytes in the order of a hash of their names, so another
    ``data.val_fraction`` or ``data.max_bytes`` holds out others, and the model then trains
    on the text it is scored on (QA: 203 of ``stdlib_nextline``'s 300 items at
    ``val_fraction=0.02``). Other corpora are not read for this."""
    shipped = set(shipped_tasks())
    shipped = [n for n in names if n in shipped]
    if data_cfg.source != Source.stdlib or not shipped:
        return []
    trained = _stdlib_trained_files(data_cfg.val_fraction, data_cfg.max_bytes)
    lines = []
    for task in shipped:
        files = {item["source"].rsplit(":", 1)[0] for item in task_items(f"{task}.jsonl")}
        if seen := files & trained:
            lines.append(
                f"{task}: {len(seen)} of the {len(files)} files its items come from are in this "
                f"run's training split (data.val_fraction={data_cfg.val_fraction}, "
                f"data.max_bytes={data_cfg.max_bytes}), so its scores count text the model "
                "trained on; the shipped tasks are held out of Python 3.11's standard library "
                f"at data.val_fraction={DEFAULT_DATA.val_fraction} of the whole corpus "
                f"(data.max_bytes={DEFAULT_DATA.max_bytes})"
            )
    return lines


@functools.cache
def _stdlib_trained_files(val_fraction: float, max_bytes: int | None) -> frozenset[str]:
    """The names of the standard library's files a run on it trains on (its training split;
    where it has too few files to hold whole ones out, every file)."""
    docs = load_documents(
        DataConfig(source=Source.stdlib, val_fraction=val_fraction, max_bytes=max_bytes)
    )
    return frozenset(docs[i][0] for i in trained_documents(docs, val_fraction))


# Shipped tasks that take no shots: their YAML sets num_fewshot: 0, which lm-eval keeps
# whatever num_fewshot asks (a rolling perplexity scores whole texts).
NO_SHOTS = ("stdlib_perplexity",)


def fewshot_pool(name: str) -> int:
    """How many few-shot examples shipped task ``name`` can draw: its ``fewshot`` split, or
    where it has none (lm-eval then draws from the items scored, leaving out the one scored)
    its items but one."""
    if (TASKS_DIR / f"{name}.fewshot.jsonl").exists():
        return len(task_items(f"{name}.fewshot.jsonl"))
    return len(task_items(f"{name}.jsonl")) - 1


@functools.cache
def task_items(file: str) -> tuple[dict[str, Any], ...]:
    """The items of a shipped task's JSONL file (``TASKS_DIR``), read once."""
    lines = (TASKS_DIR / file).read_text(encoding="utf-8").splitlines()
    return tuple(json.loads(line) for line in lines if line.strip())


def check_fewshot(names: Sequence[str], num_fewshot: int | None) -> None:
    """``num_fewshot`` within each shipped task's pool (``fewshot_pool``), before a model is
    loaded: the harness's own refusal came after, as a traceback. A hub task's pool is known
    once its data are loaded (``run_tasks`` says it in the same words)."""
    if not num_fewshot:
        return
    shipped = set(shipped_tasks()) - set(NO_SHOTS)
    for name in names:
        if name in shipped and num_fewshot > (pool := fewshot_pool(name)):
            raise ConfigError(
                f"num_fewshot={num_fewshot}: task {name!r} has {pool} few-shot examples; "
                f"allowed: 0 to {pool}"
            )


@dataclass(frozen=True)
class ChatFormat:
    """lm-eval's chat formatting of every request (``lmlab evaluate apply_chat_template=
    true``), for an instruct model: each context rendered in the model's chat template
    (``LmlabLM.apply_chat_template``) as a user turn followed by the assistant's prompt, the
    few-shot examples as turns of their own (``fewshot_as_multiturn``) and
    ``system_instruction`` as the system turn, as lm-eval's CLI does for HFLM."""

    template: bool | str = True  # True: the template (or "default"); a name among several
    fewshot_as_multiturn: bool = True  # lm-eval's default
    system_instruction: str | None = None

    def harness_args(self) -> dict[str, Any]:
        return {
            "apply_chat_template": self.template,
            "fewshot_as_multiturn": bool(self.template) and self.fewshot_as_multiturn,
            "system_instruction": self.system_instruction,
        }

    def settings(self) -> dict[str, Any]:
        """``CHAT_SETTINGS``, as an eval record holds them: the arguments the harness took."""
        args = self.harness_args()
        return {name: args[name] for name in CHAT_SETTINGS}


def run_tasks(
    lm: Any,
    names: Sequence[str],
    limit: int | None = None,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 1000,
    progress: bool = False,
    folders: tuple[str, ...] = (),
    chat: ChatFormat | None = None,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of ``lm`` on ``names`` (checked by ``check_tasks``), with
    its fixed seeds: the same model gives the same results. The global random state is as
    before. ``chat``: each request formatted in the model's chat template. Returns the
    harness's results dict (no per-item samples), its ``config`` holding ``chat``'s settings
    (``CHAT_SETTINGS``), which lm-eval's leaves out."""
    import lm_eval.evaluator
    from lm_eval import simple_evaluate

    hub = needs_hub(names, folders)
    # simple_evaluate also describes the machine (pip, GPUs, OS: 1.5 s on the 2-core CPU, more
    # under load) for a report lmlab does not write: skipped, at every in-training eval too;
    # so is the git commit of the working directory (not the model's: outside a repository,
    # git printed "fatal: not a git repository" on every evaluation)
    no_env_info = mock.patch.object(lm_eval.evaluator, "add_env_info", lambda results: None)
    no_git = mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None)
    offline = offline_hub(hub and not hub_reachable())
    chat = chat or ChatFormat(template=False)
    if chat.template and hasattr(lm, "chat_template"):
        # the template a name chooses: lm-eval asks the model for it only with an evaluation
        # tracker, which it is not given here (every request went out in the default one)
        lm.chat_template(chat.template)
    with offline, quiet_harness(progress), kept_random_state(), no_env_info, no_git:
        try:
            results = simple_evaluate(
                model=lm,
                tasks=list(names),
                task_manager=task_manager(hub, folders),
                limit=limit,
                num_fewshot=num_fewshot,
                bootstrap_iters=bootstrap_iters,
                batch_size=getattr(lm, "batch_size", None),  # recorded only: lm is built
                log_samples=False,
                **chat.harness_args(),
            )
        except ValueError as err:  # the few-shot sampler's, for a pool smaller than asked
            if num_fewshot and "Sample larger than population" in str(err):
                raise ConfigError(
                    f"num_fewshot={num_fewshot}: a task of {', '.join(names)} has fewer "
                    "few-shot examples than that"
                ) from None
            raise
    if results is not None:  # None on a rank lm-eval gives no results
        results.setdefault("config", {}).update(chat.settings())
    return results


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``results["results"]`` as ``{"eval/<task>/<metric>": value}``: lm-eval's key
    ``acc,none`` becomes ``acc`` (``acc_<filter>`` for another filter), standard errors
    included; values that are not numbers (``N/A``) and the item count are left out."""
    out: dict[str, float] = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if key == "sample_len" or isinstance(value, bool) or not isinstance(value, int | float):
                continue  # sample_len: the item count, not a metric
            metric, _, filt = key.partition(",")
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            out[f"eval/{task}/{name}"] = float(value)
    return out
