"""Evaluation of a checkpoint: the configured tasks (held-out and text perplexity, WikiText-2,
HellaSwag, LAMBADA, any multiple-choice jsonl, sample generations) into one metrics table."""

from pipeline.evaluate.language_model import bits_per_byte, heldout_loss
from pipeline.evaluate.suite import eval_table, run_evaluation

__all__ = ["bits_per_byte", "eval_table", "heldout_loss", "run_evaluation"]
