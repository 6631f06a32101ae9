"""Data for fastrobust: task loading (hub / local XTREME TSV / JSONL / synthetic), G-XLT pairs, encoding.

Public API::

    TaskData, load_task(cfg: TaskConfig) -> TaskData
    encode_dataset(dataset, tokenizer, max_length) -> datasets.Dataset
    make_collator(tokenizer) -> callable

Label conventions (see :mod:`fastrobust.data.tasks` and docs/data.md): PAWS-X 0 = not paraphrase,
1 = paraphrase; XNLI 0 = entailment, 1 = neutral, 2 = contradiction.
"""

from fastrobust.data.encode import encode_dataset, make_collator
from fastrobust.data.loader import TaskData, load_synonyms, load_task

__all__ = ["TaskData", "encode_dataset", "load_synonyms", "load_task", "make_collator"]
