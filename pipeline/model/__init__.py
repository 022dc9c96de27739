"""The GPT model: architecture, generation, FLOPs estimate, and safetensors save/load."""

from pipeline.model.checkpoint import load_model, load_weights, save_model
from pipeline.model.gpt import GPT, IGNORE_INDEX, GPTConfig

__all__ = ["GPT", "GPTConfig", "IGNORE_INDEX", "load_model", "load_weights", "save_model"]
