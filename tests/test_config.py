"""Every preset x experiment composes and validates; knob registries match their enums."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from lmlab.config import (
    CONF_DIR,
    Activation,
    Compile,
    DataConfig,
    Family,
    GuardMode,
    ModelConfig,
    Norm,
    NormPlacement,
    Positional,
    compile_mode,
    resolve_configs,
)
from lmlab.errors import ConfigError
from lmlab.model import FAMILIES
from lmlab.model.feedforward import FEEDFORWARDS
from lmlab.model.moe import EXPERTS
from lmlab.model.norms import NORMS, PLACEMENTS
from lmlab.model.positional import POSITIONALS
from lmlab.train.compose import compose_train

PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# Refused on purpose: GPT-2 XL's 25 heads cannot be split into 2 key/value groups, nor the
# Shakespeare model's 4 into gpt_8x7b's 8; BERT's segment embeddings exist in the bert family
# only; an encoder without positions (NoPE) sees a bag of tokens.
REFUSED = {
    ("gpt_xl", "gqa"): "n_heads=25 is not divisible by model.n_kv_heads=2",
    ("gpt_8x7b", "shakespeare_char_cpu"): "n_heads=4 is not divisible by model.n_kv_heads=8",
}
for _preset in PRESETS:
    _family = _preset.split("_")[0]
    if _family != "bert":
        REFUSED[_preset, "bert"] = (
            rf"type_vocab_size=2 .*applies to model.family=bert only, not family={_family}"
        )
    if _family != "gpt":
        REFUSED[_preset, "nope"] = f"positional=none cannot work with model.family={_family}"


@pytest.mark.parametrize(
    ("registry", "enum"),
    [
        (FEEDFORWARDS, Activation),
        (EXPERTS, Activation),
        (NORMS, Norm),
        (PLACEMENTS, NormPlacement),
        (POSITIONALS, Positional),
        (FAMILIES, Family),
    ],
)
def test_registry_keys_equal_enum_members(registry: dict, enum: type) -> None:
    assert set(registry) == set(enum)


def test_presets_and_experiments_exist() -> None:
    """One ladder for the families: CPU scale (tiny, mini) for each, then the published sizes."""
    sizes = {"gpt": "tiny mini small medium large xl 1b 3b 7b 8x7b", "bert": "tiny mini base large"}
    sizes["t5"] = "tiny mini small base large"
    assert {f"{f}_{s}" for f, ss in sizes.items() for s in ss.split()} == set(PRESETS)
    required = (
        "prenorm postnorm sandwich rmsnorm layernorm relu gelu swiglu geglu learned "
        "sinusoidal rope alibi nope gqa mqa sliding_window gpt2 llama vaswani2017 bert t5 mixtral"
    )
    assert set(required.split()) <= set(EXPERIMENTS)


# Every experiment on each family's smallest preset and on gpt_8x7b (the one preset that sets
# knobs besides sizes: grouped queries, experts, d_ff); on every other preset (GPT-2 XL's 25
# heads among them) the experiments whose validity depends on the sizes (head count, head
# width, gated width) and none: 145 of the 475 pairs, each a full Hydra composition (~0.3 s).
# A size-free experiment on another preset of its family repeats a checked case: within a
# family the presets differ in sizes only. mqa's one KV head divides any head count, and
# sliding_window's 64 fits every preset's context (both asserted below).
EDGE_PRESETS = {"gpt_tiny", "gpt_8x7b", "bert_tiny", "t5_tiny"}
# llama applies rope (even head width) and swiglu (gated width) together
SIZE_SENSITIVE = [None, "gqa", "llama"]
PAIRS = [(p, e) for p in sorted(EDGE_PRESETS) for e in [None, *EXPERIMENTS]]
PAIRS += [(p, e) for p in PRESETS if p not in EDGE_PRESETS for e in SIZE_SENSITIVE]


def test_the_presets_of_a_family_differ_in_sizes_only() -> None:
    """What lets PAIRS check a size-free experiment on each family's smallest preset only."""
    sizes = {"defaults", "d_model", "n_layers", "n_heads", "max_seq_len", "ffn_multiple_of"}

    def fields(group: str, name: str) -> dict:
        return yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text())

    presets = {preset: fields("model", preset) for preset in PRESETS}
    knobs = {p: {k: v for k, v in f.items() if k not in sizes} for p, f in presets.items()}
    for preset in set(PRESETS) - EDGE_PRESETS:
        assert knobs[preset] == knobs[preset.split("_")[0] + "_tiny"], preset
    assert fields("experiment", "mqa")["model"] == {"n_kv_heads": 1}
    window = fields("experiment", "sliding_window")["model"]["attention_window"]
    assert all(window <= f["max_seq_len"] for f in presets.values())


@pytest.mark.parametrize(("preset", "experiment"), PAIRS)
def test_every_preset_x_experiment_validates(preset: str, experiment: str | None) -> None:
    overrides = [f"model={preset}"] + ([f"+experiment={experiment}"] if experiment else [])
    cfg = compose_train(overrides)
    if (preset, experiment) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[preset, experiment]):
            OmegaConf.to_object(cfg.model)
        return
    model_cfg = OmegaConf.to_object(cfg.model)
    assert isinstance(model_cfg, ModelConfig)
    assert isinstance(OmegaConf.to_object(cfg.data), DataConfig)


def test_experiment_applies_its_delta() -> None:
    cfg = compose_train(["model=gpt_medium", "+experiment=llama"])
    m = OmegaConf.to_object(cfg.model)
    assert (m.d_model, m.n_layers, m.norm, m.activation, m.positional, m.bias) == (
        1024,
        24,
        Norm.rmsnorm,
        Activation.swiglu,
        Positional.rope,
        False,
    )
    assert not m.embed_scale
    v = OmegaConf.to_object(compose_train(["+experiment=vaswani2017"]).model)  # its 3.4 too
    assert (v.norm_placement, v.activation, v.positional, v.embed_scale) == (
        NormPlacement.post,
        Activation.relu,
        Positional.sinusoidal,
        True,
    )


@pytest.mark.parametrize(
    "override",
    [
        "model.norm=batchnorm",
        "model.activation=tanh",
        "model.positional=xpos",
        "model.norm_placement=middle",
    ],
)
def test_unknown_knob_value_fails_at_compose_time(override: str) -> None:
    with pytest.raises((ValidationError, ConfigCompositionException)):
        compose_train([override])


def test_a_model_config_built_in_python_takes_choices_as_their_values() -> None:
    """``ModelConfig(norm="rmsnorm")`` as Hydra's ``model.norm=rmsnorm``: the text becomes
    the choice (refusals name ``.value``: they were AttributeErrors), an unknown one is
    refused naming the allowed values (``batchnorm`` was accepted, a KeyError at build)."""
    cfg = ModelConfig(vocab_size=50, positional="rope", rope_scaling="linear", norm="rmsnorm")
    assert cfg.rope_scaling == "linear" and cfg.norm is Norm.rmsnorm
    with pytest.raises(ConfigError, match=r"^model.positional=none cannot work with model.fam"):
        ModelConfig(vocab_size=50, family="bert", positional="none")
    with pytest.raises(ConfigError, match=r"^model.norm='batchnorm' is not one of its values; "):
        ModelConfig(vocab_size=50, norm="batchnorm")


def test_typo_in_model_key_fails_at_compose_time() -> None:
    with pytest.raises(ConfigCompositionException, match="d_modle"):
        compose_train(["model.d_modle=64"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 100, "n_heads": 7}, "d_model=100 is not divisible by model.n_heads=7"),
        ({"n_heads": 4, "n_kv_heads": 3}, "n_heads=4 is not divisible by model.n_kv_heads=3"),
        ({"d_model": 12, "n_heads": 4, "positional": Positional.rope}, "even head dimension"),
        ({"attention_window": 512, "max_seq_len": 256}, "attention_window=512 must be between"),
        ({"dropout": 1.5}, "dropout=1.5"),
        (
            {"moe": {"num_experts": 4, "top_k": 5}},
            "moe.top_k=5 must be between 1 and model.moe.num",
        ),
        (  # each expert is d_ff / granularity wide
            {"d_model": 32, "moe": {"num_experts": 4, "granularity": 3}},
            r"model.moe.granularity=3 must divide the feed-forward width 128 \(derived from "
            r"model.d_model=32 and model.activation=gelu\)",
        ),
        (
            {"d_ff": 100, "moe": {"num_experts": 4, "granularity": 8}},
            r"granularity=8 must divide the feed-forward width 100 \(model.d_ff=100\)",
        ),
    ],
)
def test_cross_field_errors_name_fields_and_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def llama_hidden_dim(d_model: int, multiple_of: int) -> int:
    """Meta's Llama ``FeedForward.__init__`` (model.py), hidden_dim = 4 * dim on the way in."""
    hidden_dim = int(2 * (4 * d_model) / 3)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


# (d_model, ffn_multiple_of): Llama-2-7B's; the default 64; and multiples that are not of 8,
# where 8d/3 rounded up directly is one multiple more than Llama's truncate-then-round
@pytest.mark.parametrize(
    ("d_model", "multiple_of"), [(4096, 256), (128, 64), (128, 1), (4096, 1), (7, 3), (100, 2)]
)
def test_gated_ffn_width_follows_llama_rule(d_model: int, multiple_of: int) -> None:
    cfg = ModelConfig(d_model=d_model, n_heads=1, activation="swiglu", ffn_multiple_of=multiple_of)
    assert cfg.ffn_dim == llama_hidden_dim(d_model, multiple_of)
    assert ModelConfig(d_model=4096, activation="swiglu", ffn_multiple_of=256).ffn_dim == 11008
    assert ModelConfig(d_model=128, activation=Activation.gelu).ffn_dim == 512


# Each is refused by resolve_configs, which lmlab train runs before torch is imported and
# train() runs before any data is prepared; the message names the field and the value.
BAD_VALUES = [
    ("+model.nrom=rmsnorm", "model.nrom=rmsnorm: unknown key; allowed: family, d_model"),
    ("+data.seq_lne=64", "data.seq_lne=64: unknown key; allowed: source, path"),
    ("+guard.mdoe=skip", "guard.mdoe=skip: unknown key; allowed: mode, max_skips"),
    ("model.d_ff=0", "model.d_ff=0 must be >= 1 (or null"),
    ("model.ffn_multiple_of=0", "model.ffn_multiple_of=0 must be >= 1"),
    ("model.norm_eps=-1", "model.norm_eps=-1.0 must be > 0"),
    ("model.norm_eps=0", "model.norm_eps=0.0 must be > 0"),
    ("model.rope_theta=0", "model.rope_theta=0.0 must be > 0"),
    ("model.init_std=-0.02", "model.init_std=-0.02 must be > 0"),
    ("data.seq_len=0", "data.seq_len=0 must be >= 1 (or null"),
    ("data.vocab_size=1", "data.vocab_size=1 must be >= 2"),
    ("data.num_workers=-1", "data.num_workers=-1 must be >= 0"),
    ("optim.lr=0", "optim.lr=0 must be a positive number"),
    ("optim.lr=-1", "optim.lr=-1 must be a positive number"),
    ("optim.lr=abc", "optim.lr=abc must be a positive number"),
    ("seed=abc", "seed=abc: Value 'abc' of type 'str' could not be converted to Integer; allo"),
    ("seed=abc", "to Integer; allowed: an integer"),  # what the field takes, from its type
    ("seed=-1", "seed=-1: allowed an integer from 0 to 4294967295 (2**32-1"),  # numpy's range
    ("seed=5000000000", "seed=5000000000: allowed an integer from 0 to 4294967295"),
    ("eval.limit=0.5", "eval.limit=0.5: Value '0.5' of type 'float' could not be converted to "),
    ("eval.limit=0.5", "converted to Integer; allowed: an integer or null"),
    ("eval.tasks=stdlib_nextline", "; allowed: a list, as eval.tasks=[stdlib_nextline]"),
    ("eval.tasks=null", "eval.tasks=None: field 'eval.tasks' is not Optional; allowed: a list, "),
    ("guard.mode=foo", "guard.mode=foo: Invalid value 'foo', expected one of [stop, skip, off]"),
    ("guard.max_skips=-1", "guard.max_skips=-1 must be >= 0"),
    ("guard.min_loss_scale=-1", "guard.min_loss_scale=-1.0 must be >= 0 and finite"),
    ("checkpoint.every_n_steps=-5", "checkpoint.every_n_steps=-5 must be >= 0"),
    ("resume=maybe", "resume=maybe: allowed true, false, auto"),
    ("resume=1", "resume=1: allowed true, false, auto"),  # 1 == True in Python: not here
    ("optim.fused=0", "optim.fused=0: allowed auto, true, false"),
    ("final_val_batches=0", "final_val_batches=0: allowed null, a number of batches (an int"),
    ("final_val_batches=1.5", "final_val_batches=1.5: allowed null, a number of batches"),
    ("final_val_batches=all", "final_val_batches='all': allowed null, a number of batches"),
    ("final_val_batches=true", "final_val_batches=true: allowed null, a number of batches"),
    ("cuda_graphs=true", "cuda_graphs=true needs compile=model (got compile=false)"),  # as typed
    ("compile=maybe", "compile='maybe': allowed false, blocks, model"),
    # the eager mode's name inside lmlab, another case, null: not what compile= takes
    ("compile=none", "compile='none': allowed false, blocks, model (true = blocks)"),
    ("compile=Model", "compile='Model': allowed false, blocks, model (true = blocks)"),
    ("compile=BLOCKS", "compile='BLOCKS': allowed false, blocks, model (true = blocks)"),
    ("compile=null", "compile=null: allowed false, blocks, model (true = blocks)"),
    ("compile=1", "compile=1: allowed false, blocks, model (true = blocks)"),
    ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path=/nonexistent/last.ckpt: no such file"),
    ("scheduler.warmup_steps=-1", "scheduler.warmup_steps=-1 must be an int >= 0 (steps)"),
    ("scheduler.warmup_steps=2.5", "scheduler.warmup_steps=2.5 must be an int >= 0 (steps)"),
    ("scheduler.min_lr_ratio=1.5", "scheduler.min_lr_ratio=1.5 must be in [0, 1]"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 must be >= 0 (0: no decay)"),
    ("optim.betas=[0.9,1.5]", "optim.betas=[0.9, 1.5] must be two numbers in [0, 1)"),
    ("optim.betas=[0.9]", "optim.betas=[0.9] must be two numbers in [0, 1)"),
    ("optim.eps=0", "optim.eps=0 must be a positive number"),
    ("trainer.val_check_interval=0", "val_check_interval=0 must be an int >= 1 (optimizer steps)"),
    ("trainer.val_check_interval=0.5", "trainer.val_check_interval=0.5 must be an int >= 1"),
    ("trainer.log_every_n_steps=0", "log_every_n_steps=0 must be an int >= 1 (optimizer steps)"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 must be >= 0"),
    ("+trainer.gradient_clip_algorithm=vaue", "trainer.gradient_clip_algorithm=vaue: allowed "),
    ("trainer.limit_val_batches=-1", "trainer.limit_val_batches=-1: allowed an int >= 0"),
    ("trainer.limit_val_batches=1.5", "trainer.limit_val_batches=1.5: allowed an int >= 0"),
    ("model.moe.num_experts=-1", "model.moe.num_experts=-1 must be >= 0 (0: dense"),
    ("model.moe.capacity_factor=0", "model.moe.capacity_factor=0.0 must be > 0 (or null"),
    ("model.moe.every_n_layers=0", "model.moe.every_n_layers=0 must be >= 1"),
    ("model.moe.granularity=0", "model.moe.granularity=0 must be >= 1 (1: experts as wide as"),
    ("model.moe.z_loss_coef=-1", "model.moe.z_loss_coef=-1.0 must be >= 0"),
    ("+model.moe.topk=2", "model.moe.topk=2: unknown key; allowed: num_experts, top_k"),
    ("model.moe.top_k=-5", "model.moe.top_k=-5 must be >= 1"),  # dense too: never a top-k
    ("model.moe.top_k=0", "model.moe.top_k=0 must be >= 1"),
    ("trainer.max_steps=abc", "trainer.max_steps='abc' must be an int"),
    # options that end Lightning's epochs: the run is a plan of steps over lmlab's sampler
    ("trainer.max_epochs=1", "trainer.max_epochs=1: the run trains its planned steps whatever"),
    ("+trainer.limit_train_batches=1", "trainer.limit_train_batches=1: each Lightning epoch"),
    ("+trainer.limit_train_batches=0.5", "; allowed: null or 1.0 (every batch); a shorter run"),
    ("+trainer.fast_dev_run=true", "trainer.fast_dev_run=true: it ends after its batches while"),
    ("+trainer.fast_dev_run=3", "quick check: +debug=smoke (trainer.max_steps=1 for one step)"),
    ("+trainer.max_time=00:00:01:00", "trainer.max_time=00:00:01:00: a run stopped by the clo"),
    ("+trainer.overfit_batches=2", "trainer.overfit_batches=2: each Lightning epoch restarts"),
    # minimums Lightning holds an early stop to: the run trains its planned steps, no more
    ("+trainer.min_steps=8", "trainer.min_steps=8: the run trains exactly its planned steps"),
    ("+trainer.min_epochs=3", "trainer.min_epochs=3: the run is one Lightning epoch of its"),
    ("trainer.accumulate_grad_batches=1.5", "trainer.accumulate_grad_batches=1.5 must be an int"),
    # a new top-level key that misspells one or names a group's field: trained as not given
    ("+sed=1", "+sed: not a key lmlab reads, so it would change nothing; did you mean seed?"),
    ("+dryrun=true", "+dryrun: not a key lmlab reads, so it would change nothing; did you mean"),
    ("+lr=0.1", "+lr: not a key lmlab reads, so it would change nothing; did you mean optim.lr?"),
    ("+max_steps=3", "+max_steps: not a key lmlab reads, so it would change nothing; did you me"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_values_are_refused_before_any_work(override: str, message: str) -> None:
    cfg = compose_train([override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_configs(cfg)


@pytest.mark.parametrize("group", ["model", "trainer", "optim", "scheduler", "budget", "callbacks"])
def test_a_group_a_run_needs_cannot_be_removed(group: str) -> None:
    """``~model`` (Hydra's removal of a default) was OmegaConf's traceback, "Key 'model' is not
    in struct"; ``~callbacks`` trained without lmlab's checkpoints, guard and resume state.
    Either is refused, naming the options the group has."""
    options = ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))
    message = f"~{group}: a run needs the {group} group, so it cannot be removed; choose an "
    with pytest.raises(ConfigError, match=re.escape(message) + r".*allowed: " + re.escape(options)):
        resolve_configs(compose_train([f"~{group}"]))


def test_a_group_with_defaults_of_its_own_can_be_removed() -> None:
    """``~data`` and ``~task`` leave their schemas' defaults, ``~logger`` no logger."""
    model_cfg, data_cfg, _ = resolve_configs(compose_train(["~data", "~task", "~logger"]))
    assert (data_cfg.source.value, model_cfg.family) == ("stdlib", "gpt")


def test_an_eps_float16_cannot_hold_is_refused_for_float16_weights_and_state() -> None:
    """``16-true`` keeps Adam's moments in float16, which holds nothing below 2^-14 (6.1e-05)
    as a normal number: with the default eps 1e-8 fused AdamW divided by it in silence
    (gpt_tiny's validation loss 24 after 2 steps, against 8.2 in fp32) and foreach AdamW
    stopped on a NaN. bf16 has fp32's range; the mixed precisions keep fp32 state."""
    cfg = compose_train(["trainer.precision=16-true"])
    message = "optim.eps=1e-08 with trainer.precision=16-true: the optimizer's state is float16"
    with pytest.raises(ConfigError, match=r"^" + re.escape(message) + r".*optim.eps >= 6.1e-05"):
        resolve_configs(cfg)
    resolve_configs(compose_train(["trainer.precision=16-true", "optim.eps=1e-4"]))
    for precision in ("bf16-true", "16-mixed", "32-true"):
        resolve_configs(compose_train([f"trainer.precision={precision}"]))


@pytest.mark.parametrize(
    "override",
    [
        "model.bias=0",
        "model.tie_embeddings=7",
        "model.bias=yes",
        "dry_run=1",
        "model.tie_embeddings=off",
        "model.bias=true,0",  # a sweep's choice
        "model.moe={num_experts:8,top_k:1,capacity_factor:null,every_n_layers:1}",  # no bool
    ],
)
def test_a_true_false_field_given_another_value_on_the_command_line_is_refused(
    override: str,
) -> None:
    """OmegaConf reads any integer as a bool (7 is true) and yes/off as words for one, where
    the error for ``maybe`` says "allowed: true or false": the command line is held to it."""
    from lmlab.config.resolve import check_bool_overrides

    if "moe=" in override:  # a block without a true/false field passes
        check_bool_overrides([override])
        return
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=\S+: allowed: true or false$"):
        check_bool_overrides([override])


def test_true_false_and_what_is_not_a_field_pass_the_bool_check() -> None:
    from lmlab.config.resolve import check_bool_overrides

    check_bool_overrides(
        ["model.bias=true", "model.bias=false,true", "dry_run=false", "~model.bias", "seed=0"]
        + ["trainer.enable_progress_bar=1", "+experiment=llama", "model.d_ff=${model.d_model}"]
    )


@pytest.mark.parametrize("value", ["0", "1", "'yes'", "'maybe'"])
def test_a_true_false_field_in_an_experiment_file_is_held_to_it_too(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bias: 0`` in an ``+experiment`` file trained without biases in silence (OmegaConf
    reads an integer, or the string ``'yes'``, as a bool); refused now, naming the file and
    the override, also where the file is one of a list. A YAML bool (``yes`` unquoted is one
    in YAML 1.1, as OmegaConf loads it) passes. Every shipped delta file passes."""
    from lmlab.config import asked
    from lmlab.config.resolve import check_bool_overrides

    for group in asked.DELTA_GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            check_bool_overrides([f"+{group}={path.stem}"])
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        f"# @package _global_\nmodel:\n  n_layers: 2\n  bias: {value}\nhydra:\n  job: {{}}\n"
    )
    (tmp_path / "experiment" / "fine.yaml").write_text("# @package _global_\ndry_run: true\n")
    monkeypatch.setattr(asked, "CONF_DIR", tmp_path)
    check_bool_overrides(["+experiment=fine"])
    for override in ["+experiment=mine", "+experiment=[fine,mine]"]:
        said = f"model.bias={value.strip(chr(39))} in experiment/mine.yaml ({override}): "
        with pytest.raises(ConfigError, match=f"^{re.escape(said)}allowed: true or false$"):
            check_bool_overrides([override])


def test_a_block_given_a_value_says_what_it_takes() -> None:
    """``model.moe=8``: OmegaConf's "not a subclass of MoEConfig", then the block's fields."""
    from omegaconf import OmegaConf

    from lmlab.config import omegaconf_error

    try:
        OmegaConf.structured(ModelConfig).moe = 8
    except Exception as err:  # noqa: BLE001 - OmegaConf's ValidationError
        message = str(omegaconf_error(err, "model.moe=8"))
    assert message.startswith("model.moe=8: ")
    assert message.endswith(
        "allowed: its fields (num_experts, top_k, aux_loss_coef, z_loss_coef, capacity_factor, "
        "every_n_layers, granularity), as model.moe.num_experts=<value>"
    )


def test_a_recipe_that_does_not_fit_the_composed_model_under_init_from_says_why() -> None:
    """``init_from=bert.ckpt +experiment=bert`` without ``model=bert_*``: the composed model
    (the default gpt_tiny with BERT's segment embeddings) is checked before the checkpoint's
    replaces it, so the refusal names init_from and the way out, not only the GPT field."""
    cfg = compose_train(["+experiment=bert", "init_from=bert.ckpt", "data.tokenizer=checkpoint"])
    with pytest.raises(ConfigError) as err:
        resolve_configs(cfg)
    message = str(err.value)
    assert message.startswith("model.type_vocab_size=2 (segment embeddings, +experiment=bert)")
    assert "init_from=bert.ckpt takes the architecture from the checkpoint" in message
    assert "model.family=gpt" in message and "drop the +experiment" in message
    with pytest.raises(ConfigError) as plain:  # without init_from: the field's own message
        resolve_configs(compose_train(["+experiment=bert"]))
    assert "init_from" not in str(plain.value)


# (overrides, group, field, the override whose value Hydra takes): a field set twice
ASKED_TWICE = [
    (["+debug=smoke", "+experiment=shakespeare_char_cpu"], "trainer", "max_steps", 1),
    (["trainer.max_steps=5", "trainer.max_steps=7"], "trainer", "max_steps", 1),
    (["trainer.max_steps=7", "+debug=smoke"], "trainer", "max_steps", 0),
    (["model.d_model=64", "model.d_model=96"], "model", "d_model", 1),
    (["model=gpt_tiny", "model=gpt_mini"], "model", "d_model", 1),
]


@pytest.mark.parametrize(("overrides", "group", "field", "taken"), ASKED_TWICE)
def test_the_override_named_for_a_field_is_the_one_whose_value_hydra_takes(
    overrides: list[str], group: str, field: str, taken: int
) -> None:
    """init_from's and the budget's refusals name the override that asked for a field beside
    its composed value: the first of two was named with the second's value
    (``model.d_model=96 (from model.d_model=64)``, ``trainer.max_steps=2000 (from
    +debug=smoke)`` where ``+experiment=shakespeare_char_cpu`` after it set 2000)."""
    from lmlab.config.asked import asked_fields

    named = asked_fields(overrides, group, ["d_model"] if group == "model" else [])[field]
    assert named == overrides[taken]
    value = compose_train(overrides)[group][field]
    alone = compose_train(["+debug=smoke", named] if named.startswith("model=") else [named])
    assert alone[group][field] == value  # the one named gives the value the run has


def test_the_trainer_and_optimizer_values_that_are_allowed_pass() -> None:
    for ok in (
        ["trainer.gradient_clip_val=null", "trainer.limit_val_batches=0"],
        ["trainer.gradient_clip_val=0", "trainer.limit_val_batches=0.25", "optim.betas=[0, 0.5]"],
        ["trainer.val_check_interval=null", "optim.weight_decay=0"],
        ["+trainer.gradient_clip_algorithm=value", "trainer.gradient_clip_val=0.5"],
        ["+trainer.gradient_clip_algorithm=Norm"],  # Lightning reads it in any case
    ):
        resolve_configs(compose_train(ok))


@pytest.mark.parametrize(
    ("override", "mode"),
    [
        ("compile=false", Compile.none),
        ("compile=FALSE", Compile.none),  # Hydra reads true/false in any case as a bool
        ("compile=true", Compile.blocks),
        ("compile='true'", Compile.blocks),  # quoted: the word, as a true/false field takes it
        ("compile=blocks", Compile.blocks),
        ("compile=model", Compile.model),
    ],
)
def test_every_compile_value_the_readme_names_selects_its_mode(
    override: str, mode: Compile
) -> None:
    cfg = compose_train([override])
    resolve_configs(cfg)
    assert compile_mode(cfg.compile) == mode


def test_the_trainer_options_that_change_nothing_pass() -> None:
    """The shipped ``max_epochs: -1``, and each option at the value that leaves the run's
    steps as planned (``limit_train_batches=1`` is one batch, 1.0 all of them)."""
    resolve_configs(compose_train(["trainer.max_epochs=null", "+trainer.max_time=null"]))
    resolve_configs(compose_train(["+trainer.limit_train_batches=1.0"]))
    resolve_configs(compose_train(["+trainer.fast_dev_run=false", "+trainer.overfit_batches=0"]))
    resolve_configs(compose_train(["+trainer.min_steps=null", "+trainer.min_epochs=0"]))


def test_the_ends_of_the_seed_range_pass() -> None:
    """0 and 2**32-1 are seeds numpy takes (Lightning's seed_everything seeds it)."""
    for seed in (0, 2**32 - 1):
        resolve_configs(compose_train([f"seed={seed}"]))


def test_zero_seq_len_is_not_taken_for_unset() -> None:
    """``data.seq_len=null`` follows the model's context; 0 is not null (``or`` made it 256)."""
    assert resolve_configs(compose_train(["data.seq_len=64"]))[2] == 64
    assert resolve_configs(compose_train([]))[2] == 256


@pytest.mark.parametrize("mode", list(GuardMode))
def test_every_guard_mode_is_one_the_guard_takes(mode: GuardMode) -> None:
    from lmlab.train.guard import NonFiniteGuard

    assert NonFiniteGuard(mode=mode.value).mode == mode.value


LAUNCH_VARS = ("WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "LSB_JOBID", "NODE_RANK")


def test_many_nodes_need_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torchrun, SLURM or a node rank, Lightning waits forever for the other nodes."""
    for name in LAUNCH_VARS + ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    cfg = compose_train(["trainer.num_nodes=2"])
    with pytest.raises(ConfigError, match=r"trainer.num_nodes=2 .*torchrun.*SLURM") as info:
        resolve_configs(cfg)
    assert "WORLD_SIZE" in str(info.value) and "\n" not in str(info.value)
    resolve_configs(compose_train(["trainer.num_nodes=2", "dry_run=true"]))  # plans only
    resolve_configs(compose_train(["trainer.num_nodes=1"]))
    for name, value in [("WORLD_SIZE", "16"), ("SLURM_NTASKS", "16"), ("NODE_RANK", "1")]:
        monkeypatch.setenv(name, value)
        resolve_configs(cfg)
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="trainer.num_nodes=0: must be an integer >= 1"):
        resolve_configs(compose_train(["trainer.num_nodes=0"]))


def test_a_choice_prints_as_its_value() -> None:
    """``hydra.sweep.subdir=${model.activation}`` named the folders ``Activation.relu``: Python
    3.11 prints a str Enum by its class. Every config choice prints as its value."""
    from lmlab.config.knobs import Activation, Choice

    cfg = compose_train(["model.activation=swiglu"])
    named = OmegaConf.create({"m": OmegaConf.to_object(cfg.model), "dir": "runs/${m.activation}"})
    assert named.dir == "runs/swiglu"
    assert f"{Activation.relu}|{Activation.gelu:>5}" == "relu| gelu"
    assert all(str(c) == c.value for kind in Choice.__subclasses__() for c in kind)


def test_smoke_validates_two_batches_after_a_recipe_that_scores_the_whole_split() -> None:
    """+debug=smoke last (as the README says) after +experiment=shakespeare_char_cpu, whose
    final_val_batches=1.0 scores the whole held-out split after the last step: smoke's
    final validation is its two batches, not the whole split (98,432 tokens)."""
    from lmlab.train.final_validation import final_val_limit

    cfg = compose_train(["+experiment=shakespeare_char_cpu", "+debug=smoke"])
    assert cfg.trainer.limit_val_batches == 2
    assert final_val_limit(cfg.final_val_batches, cfg.trainer.limit_val_batches) is None
