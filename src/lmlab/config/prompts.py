"""How an evaluation formats its prompts: the chat settings (``lmlab evaluate``'s and
``eval.*``'s ``apply_chat_template``, ``fewshot_as_multiturn``, ``system_instruction``) as an
eval record and results.json hold them, and the words ``compare`` and a replaced record name
a format by (``prompt_format``). Plain data, no torch: the harness writes them, the analysis
reads them."""

from __future__ import annotations

from typing import Any

# What an evaluation in a chat template records beside lm-eval's own settings (each task's
# ``lm_eval`` in a record; results.json's ``eval_prompts``; infer.harness.ChatFormat's).
CHAT_SETTINGS = ("apply_chat_template", "fewshot_as_multiturn", "system_instruction")

PLAIN_PROMPTS = "plain prompts"  # lm-eval's default


def prompt_format(settings: dict[str, Any], shots: int | None = None) -> str:
    """How an evaluation with these settings (``CHAT_SETTINGS``) formatted its prompts:
    ``plain prompts`` (as every record from before lmlab evaluated in a chat template, which
    holds none of them), else ``chat template`` (its name where the model declares several),
    ``shots as turns`` where the ``shots`` few-shot examples were turns of their own (none or
    unknown shots: said where set), and the system instruction (its first words)."""
    template, multiturn, system = (settings.get(key) for key in CHAT_SETTINGS)
    if not template:
        return PLAIN_PROMPTS
    named = template not in (True, "default")  # the one template, or its default
    parts = ["chat template" + (f" {template!r}" if named else "")]
    if multiturn and shots != 0:
        parts.append("shots as turns")
    if system:
        text = str(system)
        shown = repr(text) if len(text) <= 40 else f"{text[:37]!r}... ({len(text)} characters)"
        parts.append(f"system instruction {shown}")
    return ", ".join(parts)
