"""The architecture knobs, one str-Enum each (the values a config may name)."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A config field's allowed values: compares equal to its value (``"relu"``) and prints
    as it (Python 3.11 prints a mixed-in str Enum as ``Activation.relu``), so an
    interpolation such as ``hydra.sweep.subdir=${model.activation}`` names a folder ``relu``."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Family(Choice):
    gpt = "gpt"  # decoder-only, next-token prediction (Radford et al. 2019)
    bert = "bert"  # encoder-only, masked LM (Devlin et al. 2019)
    t5 = "t5"  # encoder-decoder, span corruption (Raffel et al. 2020)


class NormPlacement(Choice):
    pre = "pre"  # x + f(norm(x))            (GPT-2, Llama)
    post = "post"  # norm(x + f(x))          (Vaswani et al. 2017, BERT)
    sandwich = "sandwich"  # x + norm(f(norm(x)))  (CogView, Ding et al. 2021)


class Norm(Choice):
    layernorm = "layernorm"
    rmsnorm = "rmsnorm"  # Zhang & Sennrich 2019


class Activation(Choice):
    relu = "relu"
    gelu = "gelu"  # tanh approximation (GPT-2; Hugging Face's gelu_new / gelu_pytorch_tanh)
    gelu_exact = "gelu_exact"  # x * Phi(x), the erf form (Hendrycks & Gimpel 2016; HF BERT's gelu)
    swiglu = "swiglu"  # Shazeer 2020, gated with SiLU
    geglu = "geglu"  # Shazeer 2020, gated with GELU


class AttentionKernel(Choice):
    """The kernel of attention that needs a mask or a bias (ALiBi, T5's buckets, a window,
    padding). Plain causal or full attention always takes SDPA with no mask (flash on GPU)."""

    sdpa = "sdpa"  # one scaled_dot_product_attention call with a dense (B|1, H|1, T, S) mask
    auto = "auto"  # FlexAttention on CUDA, SDPA elsewhere (and with attention dropout)
    flex = "flex"  # FlexAttention; trains on CUDA only (on CPU: forward passes, unfused)


# The label of a position the loss skips (padding, an unmasked BERT token): the collators set
# it, the loss (lmlab.model.loss) skips it. torch's own default ignore_index.
IGNORE = -100


class CrossEntropy(Choice):
    """How training computes the loss of an output layer (vocabulary or labels): both forms
    give the same loss and gradients, within the precision's rounding."""

    auto = "auto"  # chunked when the output is >= 8x the input width and torch has it
    full = "full"  # the whole (tokens, vocab) logits, then cross-entropy in fp32
    chunked = "chunked"  # torch's linear_cross_entropy: logits a chunk of rows at a time


class RopeScaling(Choice):
    """How RoPE's frequencies are stretched for contexts beyond the pre-training length."""

    none = "none"
    linear = "linear"  # position interpolation: every frequency / factor (Chen et al. 2023)
    llama3 = "llama3"  # Llama 3.1's: low frequencies / factor, high ones kept, smooth between


class Init(Choice):
    gpt2 = "gpt2"  # N(0, init_std), residual projections / sqrt(2 n_layers) (Radford et al. 2019)
    t5 = "t5"  # Mesh TensorFlow's: linear layers N(0, 1/fan_in), embeddings N(0, 1) (Raffel 2020)


class Positional(Choice):
    learned = "learned"  # absolute, trained table (GPT-2, BERT)
    sinusoidal = "sinusoidal"  # absolute, fixed (Vaswani et al. 2017)
    rope = "rope"  # rotary (Su et al. 2021)
    alibi = "alibi"  # linear attention bias (Press et al. 2022)
    relative = "relative"  # T5's bucketed relative attention bias (Raffel et al. 2020)
    none = "none"  # NoPE: causal masking alone (Kazemnejad et al. 2023)


GATED = {Activation.swiglu, Activation.geglu}
# Schemes that hold a table of max_seq_len positions (learned vectors, sinusoids, RoPE's
# angles): no position past it exists. ALiBi, T5's relative bias and NoPE compute from
# distances alone and read any length.
TABLED_POSITIONS = {Positional.learned, Positional.sinusoidal, Positional.rope}
# Config fields (of any group) that change how a run computes, not what: a checkpoint and
# the run that continues or loads it may differ in them.
RUNTIME_FIELDS = (
    "activation_checkpointing",
    "attention_kernel",
    "cache_dir",  # where the prepared data is kept (LMLAB_CACHE moved), not what it is
    "cross_entropy",
    "fused",
    "num_workers",
    # the widths fine-tuning's batches are padded to: null is 64 on a GPU and none on a CPU,
    # so a run resumed on another device changes it anyway (its loss is the same, save a
    # Mixture of Experts with a capacity factor: README, "Fine-tuning")
    "pad_to_multiple_of",
)
