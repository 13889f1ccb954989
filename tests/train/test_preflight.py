"""The checks before any work: ``check_run`` (a run) and ``check_job`` (each job of a sweep,
before the first starts), with and without the machine's own checks."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from cases import case
from lmlab.errors import ConfigError
from lmlab.train.compose import compose_train
from lmlab.train.preflight import check_job, check_run


def dry(cfg: DictConfig) -> DictConfig:
    """``cfg`` as ``dry_run=true`` composes it, without a composition more (0.2 s each; a
    third of this file's compositions were dry runs): a copy with the top-level flag set,
    which no other value reads (``test_dry_is_the_dry_run_composed``)."""
    planned = copy.deepcopy(cfg)
    planned.dry_run = True
    return planned


def test_dry_is_the_dry_run_composed(tmp_path) -> None:
    """The tests' ``dry`` is the config that ``dry_run=true`` composes (here with the groups
    the dry runs below choose)."""
    overrides = ["+debug=smoke", "trainer=fsdp", "cuda_graphs=true", "model=t5_tiny", "data=text"]
    cfg = compose_train(overrides, tmp_path / "run", tmp_path)
    composed = compose_train([*overrides, "dry_run=true"], tmp_path / "run", tmp_path)
    assert dry(cfg) == composed and not cfg.dry_run


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer=gpu"], r"^trainer.accelerator=gpu needs a CUDA GPU"),
        (["trainer.num_nodes=2"], r"^trainer.num_nodes=2 needs a launcher"),
        (["model.attention_kernel=flex"], r"^model.attention_kernel=flex cannot train with"),
        (["compile=model", "cuda_graphs=true"], r"^cuda_graphs=true needs a CUDA GPU"),
    ],
)
def test_what_depends_on_the_machine_is_left_to_the_machine_that_trains(
    overrides: list[str], message: str, no_gpu: None, tmp_path
) -> None:
    """A sweep a cluster launcher sends to GPU nodes is checked on a login node without one:
    there its GPU, launcher and kernel checks would refuse every job wrongly."""
    cfg = compose_train(["+debug=smoke", *overrides], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=message):
        check_job(cfg)
    check_job(cfg, machine=False)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_job_is_checked_as_far_as_its_dry_run_goes(tmp_path) -> None:
    """check_job adds the plan to check_run: its budget, and the state's memory here."""
    steps = compose_train(["+debug=smoke", "trainer.max_steps=0"], tmp_path / "run", tmp_path)
    check_run(steps)  # the budget is resolved with the plan
    with pytest.raises(ConfigError, match=r"^budget=steps needs trainer.max_steps >= 1, got 0"):
        check_job(steps)
    # with the default data's 4,096 tokens: 31.6 billion parameters, at 16 bytes each for
    # weights, gradients and AdamW's two moments
    big = compose_train(["model=gpt_8x7b"], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=r"^the model's 31,564,570,624 parameters need at le"):
        check_job(big)
    check_job(big, machine=False)  # a cluster's node may have it
    check_job(dry(big))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.precision=fp8", "trainer.precision=fp8: allowed auto, 64, 32, 16, "),
        ("trainer.accelerator=foo", "trainer.accelerator=foo: allowed auto, gpu, cpu, cuda"),
        ("trainer.devices=0", "trainer.devices=0: allowed an int >= 1 (that many devices), -1"),
        ("trainer.devices=-2", "trainer.devices=-2: allowed an int >= 1"),
        ("trainer.devices=[]", "trainer.devices=[]: allowed an int >= 1"),
        ("trainer.devices=[0,1]", "trainer.devices=[0, 1] with trainer.accelerator=cpu: allowed"),
    ],
)
def test_trainer_values_lightning_refuses_are_refused_before_any_data(
    override: str, message: str, tmp_path
) -> None:
    """Lightning refuses these only when the Trainer is built, after the data is prepared,
    through a traceback; a dry run plans for another machine, but not with such values."""
    cfg = compose_train(["+debug=smoke", override], tmp_path / "run", tmp_path)
    for planned in (cfg, dry(cfg)):
        with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
            check_run(planned)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.use_distributed_sampler=yes"], "trainer.use_distributed_sampler=yes: allo"),
        (["trainer.enable_model_summary=7"], "trainer.enable_model_summary=7: allowed: true, "),
        (
            ["callbacks.checkpoint.enable_version_counter=yes"],
            "callbacks.checkpoint.enable_version_counter=yes: allowed: true, false",
        ),
        (["logger=wandb", "logger.wandb.offline=off"], "logger.wandb.offline=off: allowed: true"),
        (["logger=wandb", "logger.wandb.offline=0"], "logger.wandb.offline=0: allowed: true, "),
    ],
)
def test_a_true_false_field_of_a_target_given_another_value_is_refused(
    overrides: list[str], message: str, tmp_path
) -> None:
    """A field its target (Lightning's Trainer, ModelCheckpoint) annotates as true/false was
    passed on as given: ``yes`` and ``7`` read as true. ``logger.wandb.offline`` is lmlab's
    (null: offline unless a key and a server): ``off`` was offline, ``0`` online, silently."""
    cfg = compose_train(["+debug=smoke", *overrides], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
        check_run(cfg)
    good = {"yes": "false", "7": "null", "off": "true", "0": "false"}
    fine = [k + "=" + good.get(v, v) for k, _, v in (o.partition("=") for o in overrides)]
    check_run(compose_train(["+debug=smoke", *fine], tmp_path / "run", tmp_path))


def test_wandb_tags_other_than_a_list_of_strings_are_refused(tmp_path) -> None:
    """W&B took ``logger.wandb.tags=baseline`` for eight tags of a letter each, in silence, and
    refused a number in the list (pydantic's traceback) only once the data was prepared. (The
    cases in one test: the list of strings that passes is composed once.)"""
    wandb = ["+debug=smoke", "logger=wandb"]
    for tags, shown in [("baseline", "baseline"), ("[v1,2]", "['v1', 2]")]:
        cfg = compose_train([*wandb, f"logger.wandb.tags={tags}"], tmp_path / "run", tmp_path)
        message = f"logger.wandb.tags={shown}: allowed: a list of strings"
        with case(tags), pytest.raises(ConfigError, match=r"^" + re.escape(message)):
            check_run(cfg)
    check_run(
        compose_train([*wandb, "logger.wandb.tags=[baseline,'2']"], tmp_path / "run", tmp_path)
    )


@pytest.mark.parametrize(("key", "value"), [("name", "2024"), ("group", "7"), ("project", "1")])
def test_a_wandb_name_that_hydra_reads_as_a_number_is_refused(
    key: str, value: str, tmp_path
) -> None:
    """``logger.wandb.name=2024`` (Hydra reads an int) failed the run once its data was
    prepared, with a traceback (``'int' object has no attribute 'encode'``)."""
    wandb = ["+debug=smoke", "logger=wandb"]
    cfg = compose_train([*wandb, f"logger.wandb.{key}={value}"], tmp_path / "run", tmp_path)
    message = f"logger.wandb.{key}={value}: allowed: a string or null"
    with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
        check_run(cfg)
    check_run(compose_train([*wandb, f"logger.wandb.{key}='{value}'"], tmp_path / "run", tmp_path))


WANDB_REFUSES = [
    ("logger.wandb.project=team/lm", "logger.wandb.project=team/lm: it holds /; allowed: "),
    ("logger.wandb.project='lm:v2'", "logger.wandb.project=lm:v2: it holds :; allowed: "),
    (f"logger.wandb.project={'p' * 129}", f"logger.wandb.project={'p' * 129}: 129 char"),
    ("logger.wandb.tags=[ok,'']", "logger.wandb.tags: '' has 0 characters; allowed: tags"),
    (f"logger.wandb.tags=[{'t' * 65}]", f"logger.wandb.tags: '{'t' * 65}' has 65 characters"),
]


def test_a_wandb_project_or_tag_that_w_and_b_refuses_is_refused_first(tmp_path) -> None:
    """A project holding ``/`` (``team/project``, the path W&B shows) or ``:``, or longer than
    128 characters, and an empty tag or one over 64 characters: W&B refused them in
    ``wandb.init``, once the data was prepared, with a traceback. The limits themselves pass.
    (The cases in one test: the config at the limits is composed once.)"""
    wandb = ["+debug=smoke", "logger=wandb"]
    for override, message in WANDB_REFUSES:
        cfg = compose_train([*wandb, override], tmp_path / "run", tmp_path)
        with case(override), pytest.raises(ConfigError, match=r"^" + re.escape(message)):
            check_run(cfg)
    at_limits = [f"logger.wandb.project={'p' * 128}", f"logger.wandb.tags=[t,{'t' * 64}]"]
    check_run(compose_train([*wandb, *at_limits], tmp_path / "run", tmp_path))


def test_wandb_log_model_in_a_run_known_to_log_offline_is_refused(tmp_path) -> None:
    """``logger.wandb.log_model=true`` where the run logs offline (here ``WANDB_MODE=offline``;
    no API key or ``logger.wandb.offline=true`` alike), which Lightning refuses as the logger
    is built: the run failed once its data was prepared, with a traceback. Asked online, it
    passes (the fallback offline: ``test_loggers``)."""
    wandb = ["+debug=smoke", "logger=wandb", "logger.wandb.log_model=true"]
    cfg = compose_train(wandb, tmp_path / "run", tmp_path)
    message = "logger.wandb.log_model=true: this run logs to W&B offline (WANDB_MODE=offline"
    with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
        check_run(cfg)


@pytest.mark.parametrize("mode", ["offlne", ""])
def test_a_wandb_mode_that_w_and_b_refuses_is_refused_first(
    mode: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``WANDB_MODE=offlne`` (a typo) or an empty ``WANDB_MODE=``: W&B's first call failed
    (pydantic's ``ValidationError``), and the run, completed, logged nothing to W&B."""
    cfg = compose_train(["+debug=smoke", "logger=wandb"], tmp_path / "run", tmp_path)
    monkeypatch.setenv("WANDB_MODE", mode)
    message = f"WANDB_MODE={mode!r}: allowed: online, offline, disabled (W&B refuses any other"
    with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
        check_run(cfg)


def test_a_logger_entry_without_a_target_is_refused(tmp_path) -> None:
    """``+logger.mine.project=x`` (no ``_target_``) failed the run once its data was prepared,
    with OmegaConf's traceback ("Key '_target_' is not in struct")."""
    cfg = compose_train(["+debug=smoke", "+logger.mine.project=x"], tmp_path / "run", tmp_path)
    message = (
        "logger.mine={'project': 'x'}: not a logger; allowed: a Lightning Logger class, as "
        "logger.mine._target_=<its dotted path>, or logger.mine=null to turn it off"
    )
    with pytest.raises(ConfigError, match=r"^" + re.escape(message) + "$"):
        check_run(cfg)


def test_every_precision_lmlab_allows_is_one_lightning_builds() -> None:
    from lightning.fabric.connector import _convert_precision_to_unified_args

    from lmlab.train.machine import trainer_precisions

    allowed = trainer_precisions()
    assert {"auto", "32-true", "bf16-mixed", "16-mixed", "64-true"} <= set(allowed)
    for precision in allowed[1:]:
        _convert_precision_to_unified_args(precision)  # raises on a value it does not take
    for ok in (["trainer=gpu", "dry_run=true"], ["trainer.devices=auto"], ["trainer.devices=1"]):
        check_run(compose_train(["+debug=smoke", *ok]), machine=False)


@pytest.mark.parametrize("precision", ["transformer-engine", "transformer-engine-float16"])
def test_a_transformer_engine_precision_without_the_package_is_refused_before_any_data(
    precision: str, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Lightning accepts the name but builds its precision only with NVIDIA's package: without
    it the run prepared its data, then failed through a traceback from the Trainer. A dry run
    plans for another machine, which may have the package."""
    from lmlab.train import machine

    monkeypatch.setattr(machine, "transformer_engine_missing", lambda: "not installed")
    cfg = compose_train(["+debug=smoke", f"trainer.precision={precision}"], tmp_path / "run")
    message = f"trainer.precision={precision} needs NVIDIA's transformer_engine package, which "
    with pytest.raises(ConfigError, match=r"^" + re.escape(message) + r".*not installed"):
        check_run(cfg)
    check_run(dry(cfg))
    monkeypatch.setattr(machine, "transformer_engine_missing", lambda: None)
    check_run(cfg)  # where it is installed, Lightning builds it
    assert not (tmp_path / "run").exists()


def test_what_the_tokenizer_must_hold_is_checked_before_the_corpus_is_read(tmp_path) -> None:
    """Arithmetic, not data: a dry run refuses them as the run would, before any data. (The
    cases in one test: the t5_tiny run that passes is composed once.)"""
    for overrides, message in [
        (["data.vocab_size=100"], "data.vocab_size=100 is too small: byte-level BPE needs at le"),
        (
            ["model=t5_tiny", "model.max_seq_len=4096", "model.positional=rope"],
            "data.seq_len=4096 makes 227 noise spans per row, more than the tokenizer's 100 sen",
        ),
    ]:
        cfg = compose_train(["+debug=smoke", *overrides], tmp_path / "run", tmp_path)
        for planned, flag in ((cfg, []), (dry(cfg), ["dry_run=true"])):
            refused = pytest.raises(ConfigError, match=r"^" + re.escape(message))
            with case(" ".join([*overrides, *flag])), refused:
                check_run(planned)
    assert list(tmp_path.iterdir()) == []
    check_run(compose_train(["+debug=smoke", "model=t5_tiny"], tmp_path / "run", tmp_path))


@pytest.mark.parametrize("precision", ["16-mixed", "16", "64-true", "transformer-engine"])
def test_a_precision_fsdp_refuses_is_refused_before_any_data(precision: str, tmp_path) -> None:
    """Lightning's ModelParallelStrategy (trainer=fsdp) takes 4 precisions; it refused another
    only once the data was prepared, through a traceback per rank. DDP takes them all."""
    fsdp = ["+debug=smoke", "trainer=fsdp", "trainer.accelerator=cpu"]
    cfg = compose_train([*fsdp, f"trainer.precision={precision}"], tmp_path / "r", tmp_path)
    for planned in (cfg, dry(cfg)):
        with pytest.raises(
            ConfigError, match=r"^trainer.precision=.* FSDPStrategy \(trainer=fsd"
        ) as refused:
            check_run(planned, machine=False)
    assert "allowed 32-true, bf16-mixed, bf16-true, 16-true, or auto" in str(refused.value)
    ddp = [
        "+debug=smoke",
        "trainer.accelerator=cpu",
        "trainer=ddp",
        f"trainer.precision={precision}",
    ]
    check_run(compose_train(ddp), machine=False)
    if precision == "16-mixed":  # what fsdp takes passes (once)
        check_run(compose_train([*fsdp, "trainer.precision=bf16-mixed"]), machine=False)
    assert list(tmp_path.iterdir()) == []


def test_the_precisions_refused_with_fsdp_are_the_ones_lightning_refuses() -> None:
    """MODEL_PARALLEL_PRECISIONS is stated in lmlab (Lightning keeps its list inside a method):
    for every precision, the check refuses exactly when Lightning's Trainer would."""
    import lightning as L
    from omegaconf import OmegaConf

    from lmlab.train.distributed import FSDPStrategy
    from lmlab.train.machine import check_strategy_precision, trainer_precisions

    trainer_cfg = OmegaConf.create(
        {"strategy": {"_target_": "lmlab.train.distributed.FSDPStrategy"}}
    )
    for precision in trainer_precisions()[1:]:  # auto is lmlab's, resolved before the Trainer
        try:
            L.Trainer(strategy=FSDPStrategy(), accelerator="cpu", devices=1, precision=precision)
            lightning_refuses = False
        except ValueError as err:
            lightning_refuses = "does not support" in str(err)
        try:
            check_strategy_precision(trainer_cfg, precision)
            lmlab_refuses = False
        except ConfigError:
            lmlab_refuses = True
        assert lmlab_refuses == lightning_refuses, precision


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, int], None]:
    """This process as one of ``n`` that torchrun (``WORLD_SIZE``) or srun (``SLURM_NTASKS``)
    started, on a machine without a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)

    def launch(variable: str, n: int) -> None:
        monkeypatch.setenv(variable, str(n))
        if variable == "WORLD_SIZE":
            monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
        else:
            monkeypatch.setenv("SLURM_JOB_NAME", "lmlab")

    return launch


def test_a_launch_of_another_process_count_is_refused_before_any_data(
    launched: Callable[[str, int], None], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """trainer.devices x trainer.num_nodes is the number of processes a launcher started:
    Lightning refused another count only once the data was prepared, a traceback per rank.
    ``auto`` on a CPU is 1 process, as Lightning counts it; a dry run plans for any launch.
    (torchrun's launch and srun's in one test: the configs are composed once.)"""
    run = ["+debug=smoke", "trainer=fsdp", "trainer.accelerator=cpu"]
    refusals = {
        "trainer.devices=4": r"^trainer.devices=4 x trainer.num_nodes=1 is 4 process\(es\), but",
        "trainer.devices=auto": r"^trainer.devices=auto \(1 on this node\) x trainer.num_nodes=1",
    }
    configs = {
        override: compose_train([*run, override], tmp_path / "run", tmp_path)
        for override in refusals
    }
    two = compose_train([*run, "trainer.devices=2"], tmp_path / "run", tmp_path)
    for variable in ("WORLD_SIZE", "SLURM_NTASKS"):
        launched(variable, 2)
        for override, message in refusals.items():
            cfg = configs[override]
            with case(f"{variable}=2 {override}"):
                with pytest.raises(ConfigError, match=message) as refused:
                    check_run(cfg)
                assert f"the launcher started 2 ({variable}=2)" in str(refused.value)
                check_run(dry(cfg))
                check_run(cfg, machine=False)  # a sweep's jobs, checked where it is started
        with case(f"{variable}=2"):
            check_run(two)
        for name in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
            monkeypatch.delenv(name, raising=False)  # the next launcher's alone
    assert list(tmp_path.iterdir()) == []


def test_processes_lightning_starts_itself_are_not_a_launch(
    launched: Callable[[str, int], None], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Lightning's own DDP children carry a WORLD_SIZE it derived from this config (no
    TORCHELASTIC_RUN_ID), and an interactive SLURM shell's SLURM_NTASKS is not srun's: as in
    Lightning, neither is compared with trainer.devices."""
    cfg = compose_train(
        ["+debug=smoke", "trainer=ddp", "trainer.devices=4"], tmp_path / "r", tmp_path
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_run(cfg)
    launched("SLURM_NTASKS", 2)
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    check_run(cfg)


def test_a_torchrun_rank_with_another_process_count_exits_with_one_line(
    tmp_path: Path,
    run_command,
    launched: Callable[[str, int], None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """What each of torchrun's ranks prints: one line, exit code 2, before any data."""
    launched("WORLD_SIZE", 2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    run = ["+debug=smoke", "trainer=ddp", "trainer.devices=4", "trainer.accelerator=cpu"]
    here = [f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    assert run_command("train", *run, *here) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: trainer.devices=4 x trainer.num_nodes=1 is 4 process(es)"), err
    assert err.count("\n") == 1 and not (tmp_path / "cache").exists()


def test_num_nodes_below_1_is_named_in_a_dry_run_too(tmp_path) -> None:
    """A dry run leaves out the launcher check, not the value check: it said 'tokens per
    step=0 must be >= 1' for trainer.num_nodes=0."""
    for nodes in ("0", "x", "true"):  # "x must be >= 1" did not say it is no number
        cfg = compose_train(
            ["+debug=smoke", f"trainer.num_nodes={nodes}"], tmp_path / "r", tmp_path
        )
        for planned in (cfg, dry(cfg)):
            with pytest.raises(ConfigError, match=rf"^trainer.num_nodes={nodes}: must be an int"):
                check_run(planned)
    assert list(tmp_path.iterdir()) == []


def test_a_sharded_ckpt_path_with_a_strategy_that_cannot_load_it_is_refused(
    tmp_path: Path,
) -> None:
    """``ckpt_path=<sharded folder>`` with trainer=cpu or ddp crashed after the data was
    prepared (IsADirectoryError); trainer=fsdp on any device count loads it. (Both trainers
    in one test: the fsdp configs that pass are composed once.)"""
    folder = tmp_path / "step000004.ckpt"
    folder.mkdir()
    torch.save({"global_step": 4}, folder / "meta.pt")  # what makes it a sharded folder
    run = ["+debug=smoke", f"ckpt_path={folder}", "trainer.accelerator=cpu"]
    for trainer in ("cpu", "ddp"):
        cfg = compose_train([*run, f"trainer={trainer}"], tmp_path / "run", tmp_path)
        message = rf"^checkpoint {folder} is sharded .* trainer=fsdp"
        with case(f"trainer={trainer}"), pytest.raises(ConfigError, match=message):
            check_run(cfg, machine=False)
    for fsdp in (["trainer.devices=1"], ["trainer.devices=2"]):
        check_run(compose_train([*run, "trainer=fsdp", *fsdp], tmp_path / "run", tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+trainer.foo=1", "trainer.foo=1: unknown key (lightning.pytorch.Trainer does not ta"),
        ("+optim.foo=1", "optim.foo=1: unknown key (torch.optim.AdamW does not take it); all"),
        ("+scheduler.foo=1", "scheduler.foo=1: unknown key (lmlab.train.schedule.warmup_cosi"),
        ("+scheduler.total_steps=100", "scheduler.total_steps=100: not a setting: lmlab passes "),
        ("+scheduler.optimizer=3", "scheduler.optimizer=3: not a setting: lmlab passes the run"),
        ("+optim.params=3", "optim.params=3: not a setting: lmlab passes the model's parameter"),
        ("+trainer.logger=false", "trainer.logger=false: not a setting: lmlab passes the logg"),
        ("+trainer.callbacks=[]", "trainer.callbacks=[]: not a setting: lmlab passes the call"),
    ],
)
def test_a_key_its_target_does_not_take_is_refused_before_any_data(
    override: str, message: str, tmp_path
) -> None:
    """Added with ``+``, a key no argument reads failed only once the Trainer or optimizer
    was built, after the data was prepared, through a traceback. So did an argument lmlab
    passes itself (the optimizer's parameters, the schedule's optimizer), or it was
    overridden without a word: +scheduler.total_steps=100 still decayed over the run's own
    steps. The arguments an unknown key's message allows leave those out."""
    cfg = compose_train(["+debug=smoke", override, "dry_run=true"], tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=r"^" + re.escape(message)) as refused:
        check_run(cfg)
    assert not re.search(r"allowed: .*\b(params|optimizer|total_steps)\b", str(refused.value))


@pytest.mark.parametrize(
    ("override", "passed"),
    [
        ("+logger.wandb.id=myrun", "the run directory's W&B id"),
        ("+logger.wandb.resume=never", "'allow'"),
        ("+logger.wandb.mode=disabled", "offline or online as logger.wandb.offline says"),
    ],
)
def test_a_wandb_argument_lmlab_passes_itself_is_refused(
    override: str, passed: str, tmp_path
) -> None:
    """``+logger.wandb.id=myrun`` was overridden without a word by the run directory's id (so
    were ``resume`` and, offline, ``mode``): the run logged under another id than asked."""
    cfg = compose_train(["+debug=smoke", "logger=wandb", override], tmp_path / "run", tmp_path)
    key = override.lstrip("+").partition("=")[0]
    message = f"{key}={override.partition('=')[2]}: not a setting: lmlab passes {passed}"
    with pytest.raises(ConfigError, match=r"^" + re.escape(message)):
        check_run(cfg)


def test_a_missing_text_corpus_is_refused_where_the_run_would_read_it(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep's jobs are checked before the first starts: a missing ``data.path`` is one of
    them; a dry run plans for another machine, where the path may be, and says it is not
    here."""
    missing = ["data=text", f"data.path={tmp_path / 'missing.txt'}", "+debug=smoke"]
    cfg = compose_train(missing, tmp_path / "run", tmp_path)
    with pytest.raises(ConfigError, match=r"data.path='.*missing.txt' does not exist"):
        check_run(cfg)
    check_run(dry(cfg))
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "missing.txt' does not exist" in m and "a run here would be refused" in m for m in said
    )


def unused_cases() -> list[tuple[dict, set[str]]]:
    """Configs and the fields each switches off (the complement of what it reads)."""
    moe = {f"moe.{name}" for name in ("top_k", "aux_loss_coef", "z_loss_coef")}
    moe |= {"moe.capacity_factor", "moe.every_n_layers", "moe.granularity"}
    rope = {"rope_theta", "rope_scaling", "rope_factor", "rope_low_freq_factor"}
    rope |= {"rope_high_freq_factor", "rope_original_max_seq_len"}
    relative = {"relative_buckets", "relative_max_distance"}
    return [
        ({"positional": "alibi"}, rope | relative | moe | {"ffn_multiple_of"}),
        (
            {"positional": "rope"},
            rope - {"rope_theta", "rope_scaling"} | relative | moe | {"ffn_multiple_of"},
        ),
        (
            {"positional": "rope", "rope_scaling": "linear", "activation": "swiglu"},
            {"rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_seq_len"}
            | relative
            | moe,
        ),
        (
            {"positional": "relative", "family": "t5", "init": "t5", "activation": "swiglu"},
            rope | moe | {"init_std"},
        ),
        (
            {"d_ff": 96, "activation": "swiglu", "moe": {"num_experts": 4}},
            rope | relative | {"ffn_multiple_of"},
        ),
    ]


@pytest.mark.parametrize(("fields", "unused"), unused_cases())
def test_a_field_another_switches_off_changes_nothing_it_builds(fields: dict, unused) -> None:
    """``unused_fields`` lists the fields another field switches off, and each of them truly
    changes nothing: a model built with one of them changed has the same weights and the same
    output (the MoE loss weights and capacity, which act in training only, are listed only
    where there is no router at all)."""
    from omegaconf import OmegaConf

    from lmlab.config import ModelConfig
    from lmlab.model import build_model

    small = {"d_model": 32, "n_heads": 2, "n_layers": 2, "max_seq_len": 16, "vocab_size": 64}
    base = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), small, fields))
    assert set(base.unused_fields()) == unused
    changed = {  # a valid value that differs from the default, for every field listed
        "rope_theta": 500.0,
        "rope_scaling": "none",  # the only value allowed without RoPE
        "rope_factor": 2.0,
        "rope_low_freq_factor": 2.0,
        "rope_high_freq_factor": 3.0,
        "rope_original_max_seq_len": 8,
        "relative_buckets": 8,
        "relative_max_distance": 12,
        "ffn_multiple_of": 7,
        "init_std": 0.5,
        "moe.top_k": 1,
        "moe.aux_loss_coef": 0.5,
        "moe.z_loss_coef": 0.5,
        "moe.capacity_factor": 1.0,
        "moe.every_n_layers": 2,
        "moe.granularity": 2,
    }
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))

    def built(cfg: ModelConfig) -> tuple[dict, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with torch.no_grad():
            out = model(ids, ids) if cfg.family.value == "t5" else model(ids)
        logits = out if isinstance(out, torch.Tensor) else out[0]
        return model.state_dict(), logits

    weights, logits = built(base)
    for path in unused:
        tree = OmegaConf.structured(base)
        OmegaConf.update(tree, path, changed[path])
        other = OmegaConf.to_object(tree)
        other_weights, other_logits = built(other)
        assert other_weights.keys() == weights.keys(), path
        for key, value in weights.items():
            assert torch.equal(other_weights[key], value), (path, key)
        assert torch.equal(other_logits, logits), path


def test_a_switched_off_field_asked_for_is_named_once(tmp_path, caplog) -> None:
    """A field the command asks for (an override, or an ``+experiment`` file) that another
    field switches off is named in a warning, with where it came from; a preset's fields
    are not (a preset sets every field), and a run without such a field warns nothing."""
    from lmlab.train.preflight import warn_unused

    def warnings(overrides: list[str]) -> list[str]:
        cfg = compose_train(["+debug=smoke", *overrides, "dry_run=true"], tmp_path, tmp_path)
        checked = check_run(cfg)
        return warn_unused(checked.model_cfg, checked.data_cfg)

    assert warnings(["model.positional=alibi", "model.rope_theta=500000"]) == [
        "model.rope_theta=500000.0 has no effect under model.positional=alibi: this run "
        "trains as it would without it"
    ]
    named = warnings(["+experiment=t5", "model.positional=rope", "model.moe.top_k=1"])
    assert [w.split(" has ")[0] for w in named] == [
        "model.moe.top_k=1",
        "model.relative_buckets=32 (from +experiment=t5)",
        "model.relative_max_distance=128 (from +experiment=t5)",
    ]
    assert warnings(["model=gpt_8x7b", "model.positional=alibi"]) == []  # the preset's rope_theta
    assert [w.split(" has ")[0] for w in warnings(["model.moe={top_k:1}"])] == [
        "model.moe.top_k=1"
    ]  # a dict names its fields
    assert warnings(["model.positional=rope", "model.rope_theta=500000"]) == []
    assert warnings(["data.tokenizer=char", "data.vocab_size=50000"]) == [  # a data field too
        "data.vocab_size=50000 has no effect under data.tokenizer=char: this run trains as it "
        "would without it"
    ]
    assert warnings(["data.vocab_size=2000"]) == []  # a BPE's size


def test_a_task_field_the_task_or_source_ignores_is_named(tmp_path) -> None:
    """Fine-tuning's fields with a default (null ones are refused) that the task or the
    example source switches off: another task's columns, the hub's splits, the held-out
    fraction beside a validation file; each named once, as a model or data field is."""
    from lmlab.train.preflight import warn_unused

    def warnings(overrides: list[str]) -> list[str]:
        cfg = compose_train(["+debug=smoke", *overrides], tmp_path, tmp_path)
        checked = check_run(cfg)
        return [
            w.split(" has no effect under ")[0] + " | " + w.split(" has no effect under ")[1]
            for w in warn_unused(checked.model_cfg, checked.data_cfg, checked.task_cfg)
        ]

    classify = ["task=classify", "model=bert_tiny"]
    assert warnings([*classify, "task.train_split=foo", "task.max_target_len=8"]) == [
        "task.train_split=foo | task.source=shipped: this run trains as it would without it",
        "task.max_target_len=8 | task=classify: this run trains as it would without it",
    ]
    assert warnings([*classify, "task.val_fraction=0.3"]) == [
        "task.val_fraction=0.3 | task.source=shipped (its sets have their own validation "
        "file): this run trains as it would without it"
    ]
    assert warnings(["task=seq2seq", "model=t5_tiny", "task.num_labels=5"]) == [
        "task.num_labels=5 | task=seq2seq: this run trains as it would without it"
    ]
    assert warnings(["task.decode_rows=3"]) == [
        "task.decode_rows=3 | task=lm: this run trains as it would without it"
    ]
    assert warnings([*classify, "task.text_column=text"]) == []  # read by classify
    assert warnings(["data.pad_to_multiple_of=8"]) == [  # pre-training pads nothing
        "data.pad_to_multiple_of=8 | task=lm (packed rows, never padded): this run trains as it "
        "would without it"
    ]
    assert warnings([*classify, "data.pad_to_multiple_of=8"]) == []  # its batches are padded


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["compile=blocks"], r"^cuda_graphs=true needs compile=model \(got compile=blocks\)"),
        (["compile=model", "trainer.accumulate_grad_batches=2"], r"accumulates 2 \(trainer"),
        (
            ["compile=model", "data.global_batch_size=8", "data.batch_size=4"],
            r"^cuda_graphs=true needs one micro-batch a step; this run accumulates 2",
        ),
        (
            ["compile=model", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"],
            r"^cuda_graphs=true runs on one device .*; this run has 2 device",
        ),
        (
            ["compile=model", "trainer=fsdp", "trainer.devices=1"],
            r"trainer.strategy=lmlab.train.distributed.FSDPStrategy: use trainer.devices=1",
        ),
    ],
)
def test_cuda_graphs_are_refused_where_they_cannot_hold_the_step(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    """Wherever the run is, a dry run too: another compile mode, gradient accumulation
    (torch's graph trees overwrite the first micro-batch's gradients), several devices or a
    distributed strategy."""
    cfg = compose_train(
        ["+debug=smoke", "cuda_graphs=true", *overrides], tmp_path / "run", tmp_path
    )
    for planned in (cfg, dry(cfg)):
        with pytest.raises(ConfigError, match=message):
            check_run(planned, machine=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", ["checkpoint", "preemption", "guard"])
def test_checkpoints_written_outside_the_run_directory_are_refused(
    writer: str, tmp_path: Path
) -> None:
    """Two runs given one ``callbacks.checkpoint.dirpath`` both completed, the second
    overwriting the first's ``last.ckpt``, and resume looked in the run's own folder: a folder
    other than ``<run>/checkpoints`` is refused, before any work, for every writer."""
    shared = tmp_path / "shared"
    cfg = compose_train(
        ["+debug=smoke", f"callbacks.{writer}.dirpath={shared}"], tmp_path / "run", tmp_path
    )
    expected = f"callbacks.{writer}.dirpath={shared}: a run's checkpoints go in its directory "
    with pytest.raises(
        ConfigError, match=re.escape(expected + f"({tmp_path / 'run'}/checkpoints)")
    ):
        check_run(cfg)
    same = tmp_path / "run" / "x" / ".." / "checkpoints"  # the same folder, spelled otherwise
    check_run(
        compose_train(
            ["+debug=smoke", f"callbacks.{writer}.dirpath={same}"], tmp_path / "run", tmp_path
        )
    )


def test_the_throughput_skip_the_readme_documents_is_a_shipped_field(tmp_path: Path) -> None:
    """``callbacks.throughput.skip=N`` (README, results.json's tokens_per_second) is typed
    without ``+``: the shipped config holds it, at the class's own default."""
    import inspect

    from lmlab.train.callbacks import Throughput
    from lmlab.train.targets import build_callbacks

    cfg = compose_train(["+debug=smoke", "callbacks.throughput.skip=5"], tmp_path, tmp_path)
    (throughput,) = [c for c in build_callbacks(cfg) if isinstance(c, Throughput)]
    assert throughput.skip == 5
    shipped = compose_train(["+debug=smoke"], tmp_path, tmp_path).callbacks.throughput.skip
    assert shipped == inspect.signature(Throughput).parameters["skip"].default
