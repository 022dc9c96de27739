"""Evaluation of a checkpoint: language-modeling metrics and sample generations."""

from pipeline.evaluate.language_model import bits_per_byte, evaluate_model, heldout_loss

__all__ = ["bits_per_byte", "evaluate_model", "heldout_loss"]
