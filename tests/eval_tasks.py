"""lm-eval task files the tests write: a generating task over the shipped items."""

# A task that answers by generation, as a hub task (gsm8k, triviaqa, ...) does: the shipped
# tasks only score. Its items are a copy of stdlib_cloze's, named after the task (``name``),
# its ``generation_kwargs`` a JSON object (``kwargs``).
GENERATING_TASK = """\
task: {name}
custom_dataset: !function loaders.jsonl
dataset_kwargs:
  name: {name}
test_split: test
output_type: generate_until
doc_to_text: context
doc_to_target: target
generation_kwargs: {kwargs}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
