"""BERT and T5 on the shared block library: attention patterns, padding, objectives, exact
parameter counts, T5's relative buckets, and ``train(cfg)`` for every applicable experiment."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from lmlab.config import (
    CONF_DIR,
    MIN_SEQ_LEN,
    Activation,
    Family,
    ModelConfig,
    Norm,
    NormPlacement,
    Positional,
    resolve_configs,
)
from lmlab.data.collators import (
    COLLATORS,
    IGNORE,
    MLMCollator,
    Numbered,
    SpanCorruptionCollator,
    corrupt_spans,
    noise_counts,
    random_spans_noise_mask,
    row_seeds,
)
from lmlab.data.tokenizer import SENTINELS, SPECIAL_TOKENS, train_bpe
from lmlab.errors import ConfigError
from lmlab.model import build_model, param_breakdown
from lmlab.model.positional import relative_position_bucket
from lmlab.train.compose import compose_train
from lmlab.train.run import train

V = 97

# Paths that compute the same function are compared in float64: their rounding differences are
# about eps64 (1.1e-16) x accumulation length (< 10^3) x magnitude (logits < 10^2), far below
# FP64_ATOL, while a real defect (a leaked token, a wrong cache slot) moves logits by > 1e-3.
# In float32 the same comparisons sit at the noise floor, which differs between CPU kernels.
FP64_ATOL = 1e-9
V_TOK = 370  # the BPE below learns 379 tokens from TEXT: rows use ids below this
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 50


def tiny(family: Family, **kw) -> ModelConfig:
    base = dict(family=family, d_model=32, n_layers=2, n_heads=4, max_seq_len=24, vocab_size=V)
    return ModelConfig(**{**base, **kw})


# Every knob value except NoPE (refused for encoders), with windows and GQA in the mix.
KNOBS = [
    *({"positional": p} for p in Positional if p != Positional.none),
    *({"norm_placement": p} for p in NormPlacement),
    {"norm": Norm.rmsnorm, "activation": Activation.swiglu, "bias": False},
    {"attention_window": 5, "n_kv_heads": 2, "tie_embeddings": False},
]
KNOB_IDS = ["-".join(str(getattr(v, "value", v)) for v in k.values()) for k in KNOBS]


def t5_logits(model: torch.nn.Module, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(enc, dec)


@pytest.mark.parametrize("knobs", KNOBS, ids=KNOB_IDS)
def test_encoder_is_bidirectional(knobs: dict) -> None:
    """Changing any one token changes BERT's outputs at every position (one layer per hop:
    two layers span the window of 5 around the changed token only, so no window here)."""
    torch.manual_seed(0)
    knobs = {k: v for k, v in knobs.items() if k != "attention_window"}
    model = build_model(tiny(Family.bert, type_vocab_size=2, **knobs)).eval()
    ids = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        base = model(ids)
        for t in (0, 7, 15):
            changed = ids.clone()
            changed[:, t] = (ids[:, t] + 1) % V
            diff_T = (model(changed) - base).abs().amax(dim=(0, 2))
            assert (diff_T > 1e-6).all(), f"token {t} does not reach {diff_T.argmin()}"


@pytest.mark.parametrize("knobs", KNOBS, ids=KNOB_IDS)
def test_t5_decoder_is_causal_and_sees_the_whole_encoder(knobs: dict) -> None:
    torch.manual_seed(0)
    knobs = {k: v for k, v in knobs.items() if k != "attention_window"}
    model = build_model(tiny(Family.t5, n_decoder_layers=3, **knobs)).eval().double()
    enc, dec = torch.randint(0, V, (2, 12)), torch.randint(0, V, (2, 10))
    base = t5_logits(model, enc, dec)
    assert base.shape == (2, 10, V)
    t = 6
    changed = dec.clone()
    changed[:, t] = (dec[:, t] + 1) % V
    after = t5_logits(model, enc, changed)
    torch.testing.assert_close(after[:, :t], base[:, :t], rtol=0, atol=FP64_ATOL)
    assert not torch.allclose(after[:, t], base[:, t])
    for s in (0, 5, 11):  # any encoder token reaches every decoder position
        changed = enc.clone()
        changed[:, s] = (enc[:, s] + 1) % V
        diff_S = (t5_logits(model, changed, dec) - base).abs().amax(dim=(0, 2))
        assert (diff_S > 1e-6).all(), f"encoder token {s} does not reach {diff_S.argmin()}"


@pytest.mark.parametrize("family", [Family.bert, Family.t5])
@pytest.mark.parametrize("knobs", KNOBS, ids=KNOB_IDS)
def test_padding_does_not_change_real_positions(family: Family, knobs: dict) -> None:
    """Appending padding (masked out) leaves the outputs at real positions unchanged."""
    torch.manual_seed(0)
    model = build_model(tiny(family, **knobs)).eval().double()
    ids = torch.randint(0, V, (2, 10))
    padded = torch.cat((ids, torch.full((2, 6), 1)), dim=1)
    mask = torch.arange(16) < 10
    mask = mask.expand(2, 16)
    args = (torch.randint(0, V, (2, 7)),) if family == Family.t5 else ()
    with torch.no_grad():
        short = model(ids, *args)
        long = model(padded, *args, attention_mask=mask)
        unmasked = model(padded, *args)
    real = slice(None, 10) if family == Family.bert else slice(None)
    torch.testing.assert_close(long[:, real], short[:, real], rtol=0, atol=FP64_ATOL)
    assert not torch.allclose(unmasked[:, real], short[:, real], atol=1e-4)  # the mask matters


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_bpe([TEXT], vocab_size=400)
    assert tok.get_vocab_size() >= V_TOK
    return tok


def test_mlm_rates(tokenizer) -> None:
    """Over 4M tokens: 15% selected; of those 80% [MASK], 10% random, 10% kept (each within
    0.3 points: the binomial standard error is about 0.05 points); specials never selected."""
    collate = MLMCollator(tokenizer, seed=0)
    n_vocab = tokenizer.get_vocab_size()
    rows = torch.randint(len(SPECIAL_TOKENS), n_vocab, (4096, 1022), dtype=torch.int32)
    rows[:, ::50] = tokenizer.token_to_id("<|endoftext|>")
    batch = collate(rows)
    ids = torch.cat((torch.full((4096, 1), 3), rows.long(), torch.full((4096, 1), 4)), dim=1)
    selected = batch["labels"] != IGNORE
    special = ids < len(SPECIAL_TOKENS)
    assert not (selected & special).any()
    assert torch.equal(batch["labels"][selected], ids[selected])
    assert torch.equal(batch["input_ids"][~selected], ids[~selected])
    inputs = batch["input_ids"][selected]
    masked = inputs == tokenizer.token_to_id("<mask>")
    kept = inputs == ids[selected]
    random = ~masked & ~kept
    assert selected.sum() / (~special).sum() == pytest.approx(0.15, abs=0.003)
    n = selected.sum()
    assert masked.sum() / n == pytest.approx(0.80, abs=0.003)
    # a random token equals the original 1 / (vocab - specials) of the time
    assert random.sum() / n == pytest.approx(0.10, abs=0.003)
    assert kept.sum() / n == pytest.approx(0.10, abs=0.003)
    assert (inputs[random] >= len(SPECIAL_TOKENS)).all()  # never a special token
    assert torch.equal(collate(rows[:8])["input_ids"], collate(rows[:8])["input_ids"])
    assert not torch.equal(
        collate(rows[:8])["input_ids"], MLMCollator(tokenizer, 1)(rows[:8])["input_ids"]
    )


@pytest.mark.parametrize("family", [Family.bert, Family.t5])
def test_a_row_is_corrupted_alike_in_any_batch(tokenizer, family: Family) -> None:
    """Each row's draws are seeded by the row alone. Validation's rows (plain tensors) by their
    tokens: 8 rows as one batch, as batches of 3 and 5 (another data.val_batch_size) and in
    reverse order give each row the same inputs and labels. Training's rows (``Numbered``) by
    their sample number g: split into micro-batches (accumulation) or interleaved over two
    ranks, each row is corrupted as in the whole batch, and the same row drawn again as
    another sample (its next epoch) is corrupted anew. Seeded by the whole batch, another
    split of the global batch drew other masks: one config trained on other data on 1 or 8
    devices."""
    seq_len = 64
    make = {
        Family.bert: lambda: MLMCollator(tokenizer, seed=0),
        Family.t5: lambda: SpanCorruptionCollator(tokenizer, 0, seq_len),
    }[family]
    collate = make()
    n_vocab = tokenizer.get_vocab_size()
    rows = torch.randint(len(SPECIAL_TOKENS), n_vocab, (8, collate.row_len(seq_len)))
    rows = rows.to(torch.int32)
    whole, backwards = collate(rows), collate(rows.flip(0))
    split = [collate(rows[:3]), collate(rows[3:])]
    for key, value in whole.items():
        assert torch.equal(torch.cat([part[key] for part in split]), value), key
        assert torch.equal(backwards[key].flip(0), value), key

    samples = list(range(100, 108))
    whole = collate(Numbered(rows, samples))
    micro = [collate(Numbered(rows[i : i + 2], samples[i : i + 2])) for i in range(0, 8, 2)]
    ranks = [collate(Numbered(rows[r::2], samples[r::2])) for r in (0, 1)]
    for key, value in whole.items():
        assert torch.equal(torch.cat([batch[key] for batch in micro]), value), key
        interleaved = torch.stack([ranks[b % 2][key][b // 2] for b in range(8)])
        assert torch.equal(interleaved, value), key
    again = collate(Numbered(rows, [s + 8 for s in samples]))  # the same rows, next epoch
    assert all(not torch.equal(again["labels"][b], whole["labels"][b]) for b in range(8))


def reconstruct(inputs: list[int], targets: list[int], sentinel_ids: list[int]) -> list[int]:
    """Replace sentinel k in the inputs by the tokens after sentinel k in the targets."""
    spans: dict[int, list[int]] = {}
    current = None
    for tok in targets[:-1]:  # drop EOS
        if tok in sentinel_ids:
            current = tok
            spans[current] = []
        else:
            spans[current].append(tok)
    out: list[int] = []
    for tok in inputs[:-1]:
        out.extend(spans.pop(tok) if tok in sentinel_ids else [tok])
    assert not spans, "a target span has no sentinel in the inputs"
    return out


def test_span_corruption_reconstructs_the_original(tokenizer) -> None:
    seq_len = 64
    collate = SpanCorruptionCollator(tokenizer, seed=0, seq_len=seq_len)
    sentinel_ids = [tokenizer.token_to_id(s) for s in SENTINELS]
    raw = collate.row_len(seq_len)
    rows = torch.randint(len(SPECIAL_TOKENS), tokenizer.get_vocab_size(), (64, raw))
    batch = collate(rows.to(torch.int32))
    eos, pad = tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<pad>")
    assert batch["input_ids"].shape == (64, seq_len)
    assert "attention_mask" not in batch  # every input fills the row: nothing to mask
    for b in range(64):
        inputs = batch["input_ids"][b].tolist()
        targets = batch["labels"][b][batch["labels"][b] != IGNORE].tolist()
        assert inputs[-1] == targets[-1] == eos and targets[0] == sentinel_ids[0]
        assert reconstruct(inputs, targets, sentinel_ids) == rows[b].tolist()
        assert batch["decoder_input_ids"][b, 0] == pad
        assert batch["decoder_input_ids"][b, 1 : len(targets)].tolist() == targets[:-1]
    noise = random_spans_noise_mask(raw, 0.15, 3.0, np.random.default_rng(0))
    assert noise.sum() == round(raw * 0.15) and not noise[0] and noise[-1]
    corrupted, _ = corrupt_spans(np.arange(raw), noise, np.array(sentinel_ids), eos)
    assert (np.diff(noise.astype(int)) == 1).sum() == round(noise.sum() / 3)  # spans
    assert len(corrupted) == raw - noise.sum() + round(noise.sum() / 3) + 1


def test_the_shortest_sequences_fill_bert_and_t5s_objectives(tokenizer) -> None:
    """From MIN_SEQ_LEN up, T5's row is the longest whose corrupted input fits (below 10 it
    is shorter than the sequence) and reconstructs; every BERT row selects a token, as BERT's
    own data does (its loss is never a mean over no labels). Shorter ones are refused."""
    n_vocab = tokenizer.get_vocab_size()
    sentinel_ids = [tokenizer.token_to_id(s) for s in SENTINELS]
    for seq_len in range(MIN_SEQ_LEN[Family.t5], 40):
        raw = SpanCorruptionCollator.row_len(seq_len)
        n_noise, n_spans = noise_counts(raw + 1, 0.15, 3.0)
        assert raw + 1 - n_noise + n_spans + 1 > seq_len  # one token more would not fit
        rows = torch.randint(len(SPECIAL_TOKENS), n_vocab, (8, raw), dtype=torch.int32)
        batch = SpanCorruptionCollator(tokenizer, seed=0, seq_len=seq_len)(rows)
        assert batch["input_ids"].shape == (8, seq_len)
        for b in range(8):
            assert "attention_mask" not in batch
            inputs = batch["input_ids"][b].tolist()
            targets = batch["labels"][b][batch["labels"][b] != IGNORE].tolist()
            assert reconstruct(inputs, targets, sentinel_ids) == rows[b].tolist()
    with pytest.raises(ConfigError, match=r"data.seq_len=2 is too short for T5's span corr"):
        SpanCorruptionCollator.row_len(MIN_SEQ_LEN[Family.t5] - 1)
    collate = MLMCollator(tokenizer, seed=0)
    for seq_len in (MIN_SEQ_LEN[Family.bert], 4, 6):
        rows = torch.randint(len(SPECIAL_TOKENS), n_vocab, (256, MLMCollator.row_len(seq_len)))
        assert ((collate(rows.to(torch.int32))["labels"] != IGNORE).sum(1) >= 1).all()
    # rows that select tokens on their own keep the draws they had: one rand per position
    rows = torch.randint(len(SPECIAL_TOKENS), n_vocab, (16, 254), dtype=torch.int32)
    seeds = row_seeds(0, rows)
    draws = torch.stack(
        [torch.rand(256, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    regular = torch.ones(16, 256, dtype=torch.bool)
    regular[:, [0, -1]] = False  # [CLS], [SEP]
    assert torch.equal(collate(rows)["labels"] != IGNORE, (draws < 0.15) & regular)
    for family, shortest in MIN_SEQ_LEN.items():
        preset = {Family.gpt: "gpt_tiny", Family.bert: "bert_tiny", Family.t5: "t5_tiny"}[family]
        resolve_configs(compose_train([f"model={preset}", f"data.seq_len={shortest}"]))
        if shortest > 1:
            too_short = compose_train([f"model={preset}", f"data.seq_len={shortest - 1}"])
            with pytest.raises(ConfigError, match=f"at least {shortest}$"):
                resolve_configs(too_short)


def bert(d: int, layers: int, heads: int) -> ModelConfig:
    cfg = OmegaConf.to_object(compose_train(["model=bert_base", "+experiment=bert"]).model)
    return ModelConfig(
        **{**vars(cfg), "d_model": d, "n_layers": layers, "n_heads": heads, "vocab_size": 30522}
    )


def t5(preset: str) -> ModelConfig:
    cfg = OmegaConf.to_object(compose_train([f"model={preset}", "+experiment=t5"]).model)
    return ModelConfig(**{**vars(cfg), "vocab_size": 32128})


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: bert(768, 12, 12), 109_514_298),
        (lambda: bert(1024, 24, 16), 335_174_458),
        (lambda: t5("t5_small"), 60_506_624),
        (lambda: t5("t5_base"), 222_903_552),
        (lambda: t5("t5_large"), 737_668_096),
    ],
    ids=["bert-base", "bert-large", "t5-small", "t5-base", "t5-large"],
)
def test_exact_parameter_counts_of_published_models(make, expected: int) -> None:
    with torch.device("meta"):
        model = build_model(make())
    counts = param_breakdown(model)
    assert counts["total"] == expected == sum(p.numel() for p in model.parameters())
    assert counts["other"] == 0


def test_t5_shares_one_embedding_and_one_bias_table_per_stack() -> None:
    model = build_model(tiny(Family.t5, positional=Positional.relative))
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    tables = [n for n, _ in model.named_parameters() if "positional" in n]
    assert tables == ["enc_positional.table.weight", "dec_positional.table.weight"]
    assert model.enc_positional.bidirectional and not model.dec_positional.bidirectional


@pytest.mark.parametrize(
    ("relative", "bidirectional", "bucket"),
    [  # from T5's formula with 32 buckets and max distance 128 (Mesh TF / HF reference)
        (0, True, 0),
        (-1, True, 1),
        (1, True, 17),
        (-8, True, 8),
        (-20, True, 10),
        (-127, True, 15),
        (200, True, 31),
        (5, False, 0),
        (-5, False, 5),
        (-16, False, 16),
        (-40, False, 23),
        (-1000, False, 31),
    ],
)
def test_relative_position_buckets_match_t5(
    relative: int, bidirectional: bool, bucket: int
) -> None:
    got = relative_position_bucket(torch.tensor([relative]), bidirectional, 32, 128)
    assert got.item() == bucket


@pytest.mark.parametrize("buckets", [(32, 128), (16, 64), (8, 20), (33, 128), (4, 3), (32, 1000)])
def test_relative_position_buckets_equal_t5s_for_every_setting(buckets: tuple[int, int]) -> None:
    """transformers' ``T5Attention._relative_position_bucket``, both directions, every offset
    to 1000: the bucket counts and distances a user may set, odd ones too."""
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-1000, 1001)
    for bidirectional in (True, False):
        t5 = T5Attention._relative_position_bucket(relative, bidirectional, *buckets)
        assert torch.equal(relative_position_bucket(relative, bidirectional, *buckets), t5)


def test_relative_distances_are_refused_where_a_stacks_buckets_cannot_reach_them() -> None:
    """The logarithmic buckets start where the exact ones end: buckets // 2 for a causal stack
    (GPT, T5's decoder), buckets // 4 for a bidirectional one alone (BERT), and need a larger
    max distance. BERT at (32, 16), as transformers takes it, was refused by the causal rule;
    its buckets are T5's encoder's (finite, every offset in range)."""
    relative = {"positional": Positional.relative, "relative_buckets": 32}
    bert = build_model(tiny(Family.bert, **relative, relative_max_distance=16))
    with torch.no_grad():
        assert bert(torch.randint(V, (2, 24))).isfinite().all()
    buckets = relative_position_bucket(torch.arange(-23, 24), True, 32, 16)
    assert buckets.min() == 0 and buckets.max() == 31
    for family, shortest in ((Family.bert, 8), (Family.gpt, 16), (Family.t5, 16)):
        tiny(family, **relative, relative_max_distance=shortest + 1)
        with pytest.raises(ConfigError, match=rf"> relative_buckets // . \({shortest}\) for "):
            tiny(family, **relative, relative_max_distance=shortest)


def test_family_only_fields_are_refused_elsewhere() -> None:
    with pytest.raises(ConfigError, match="type_vocab_size=2 .*family=bert only, not family=gpt"):
        ModelConfig(type_vocab_size=2)
    with pytest.raises(ConfigError, match="n_decoder_layers=3 needs model.family=t5"):
        ModelConfig(family=Family.bert, n_decoder_layers=3)
    with pytest.raises(ConfigError, match="positional=none cannot work with model.family=t5"):
        ModelConfig(family=Family.t5, positional=Positional.none)


@functools.cache
def preset_model(preset: str) -> DictConfig:
    return compose_train([f"model={preset}"]).model


def applicable(preset: str) -> list[str]:
    """The experiments this preset accepts (the others are refused, as tests/test_config.py
    checks with their messages through Hydra). Each experiment is a ``model:`` delta, merged
    here onto the preset composed once, which keeps collection fast."""
    model = preset_model(preset)
    ok = []
    for e in EXPERIMENTS:
        delta = OmegaConf.load(CONF_DIR / "experiment" / f"{e}.yaml")
        try:
            OmegaConf.to_object(OmegaConf.merge(model, delta.model))
            ok.append(e)
        except ConfigError:
            pass
    return ok


RUNS = [(p, e) for p in ("bert_tiny", "t5_tiny") for e in [None, *applicable(p)]]
# train(cfg) end to end: the presets' own recipes (bert_tiny is +experiment=bert, t5_tiny is
# +experiment=t5) and the original Transformer's; every other experiment takes a training
# step through the same collator and loss below (each train() costs seconds of Lightning set-up).
RECIPES = {None, "vaswani2017"}


def test_recipes_apply_where_they_should() -> None:
    bert_ok, t5_ok = ({e for p, e in RUNS if p == preset} for preset in ("bert_tiny", "t5_tiny"))
    assert {"bert", "t5", "vaswani2017", "gpt2", "rope", "alibi", "sliding_window"} <= bert_ok
    assert {"t5", "vaswani2017", "gpt2", "llama", "gqa", "sandwich"} <= t5_ok
    assert "nope" not in bert_ok | t5_ok and "bert" not in t5_ok


@pytest.mark.parametrize(("preset", "experiment"), RUNS)
def test_every_experiment_takes_a_training_step(tokenizer, preset: str, experiment: str | None):
    """Config -> model -> the family's collator -> the task's one loss -> gradients, for every
    experiment a family accepts (``train(cfg)`` itself runs for the recipes below)."""
    delta = (
        OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml").model if experiment else {}
    )
    node = OmegaConf.merge(preset_model(preset), delta)
    n_vocab = tokenizer.get_vocab_size()  # MLM's random replacements draw from all of it
    small = {"d_model": 32, "n_layers": 2, "n_heads": 4, "vocab_size": n_vocab}  # knobs kept
    cfg = ModelConfig(**{**vars(OmegaConf.to_object(node)), **small})
    torch.manual_seed(0)
    model = build_model(cfg)
    collate = COLLATORS[cfg.family](tokenizer=tokenizer, seed=0, seq_len=32)
    rows = torch.randint(len(SPECIAL_TOKENS), V_TOK, (2, collate.row_len(32)), dtype=torch.int32)
    batch = collate(rows)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"})
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
    loss.backward()
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(n_vocab)) < 1.0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("preset", "experiment"), [r for r in RUNS if r[1] in RECIPES])
def test_one_step(tmp_path: Path, cache_dir: Path, preset: str, experiment: str | None) -> None:
    """One training and one validation batch of ``train(cfg)`` (64-token sequences)."""
    overrides = [f"model={preset}", "+debug=smoke", "logger=none"]
    overrides += ["trainer.max_steps=1", "trainer.limit_val_batches=1"]
    overrides += [f"+experiment={experiment}"] if experiment else []
    overrides += ["data.seq_len=64"]
    train(compose_train(overrides, tmp_path, cache_dir))
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["status"] == "completed" and r["global_step"] == 1, r
    assert math.isfinite(r["val_loss"]) and r["val_loss"] > 0
    assert r["val_bits_per_byte"] is None  # only meaningful for next-token prediction


@pytest.mark.parametrize("activation", list(Activation))
def test_t5_feed_forward_drops_its_hidden_activations_as_transformers_does(
    activation: Activation,
) -> None:
    """T5's feed-forward drops its hidden activations (transformers' T5DenseActDense and
    T5DenseGatedActDense: wi, act, dropout, wo); GPT's and BERT's drop none. Same weights and
    seed: the same ops in float32 in the same order, so lmlab's encoder and decoder
    feed-forwards equal transformers' to float32 rounding, and differ from the undropped ones
    by far more."""
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5DenseActDense, T5DenseGatedActDense

    cfg = tiny(Family.t5, dropout=0.5, activation=activation, bias=False)
    model = build_model(cfg).train()
    gated = hasattr(model.encoder[0].ffn, "w_gate")
    hf_cfg = T5Config(d_model=cfg.d_model, d_ff=cfg.ffn_dim, dropout_rate=cfg.dropout)
    x_BTD = torch.randn(2, 5, cfg.d_model)
    for ffn in (model.encoder[0].ffn, model.decoder[-1].ffn):
        hf = (T5DenseGatedActDense if gated else T5DenseActDense)(hf_cfg).train()
        hf.act = ffn.act
        names = (
            {"wi_0": "w_gate", "wi_1": "w_in", "wo": "w_out"}
            if gated
            else {"wi": "w_in", "wo": "w_out"}
        )
        hf.load_state_dict({f"{k}.weight": ffn.get_submodule(v).weight for k, v in names.items()})
        torch.manual_seed(0)
        ours = ffn(x_BTD)
        torch.manual_seed(0)
        torch.testing.assert_close(ours, hf(x_BTD))
        assert not torch.allclose(ours, ffn.eval()(x_BTD), atol=1e-3)
    for family in (Family.gpt, Family.bert):
        ffn = build_model(tiny(family, dropout=0.5, activation=activation)).blocks[0].ffn
        torch.testing.assert_close(ffn.train()(x_BTD), ffn.eval()(x_BTD), rtol=0, atol=0)


def test_t5_experts_drop_their_hidden_activations_as_the_dense_feed_forward() -> None:
    """A T5 Mixture of Experts drops its experts' hidden activations (Switch Transformers'
    experts are T5's DenseActDense); a GPT's experts drop none."""
    x_BTD = torch.randn(2, 5, 32)
    for family, dropped in ((Family.t5, True), (Family.gpt, False)):
        cfg = tiny(family, dropout=0.5, moe={"num_experts": 4, "top_k": 2})
        model = build_model(cfg).train()
        ffn = (model.encoder if family == Family.t5 else model.blocks)[0].ffn
        assert torch.equal(ffn(x_BTD), ffn.eval()(x_BTD)) is not dropped
