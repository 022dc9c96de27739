"""Model weights on disk: a folder with `model.safetensors` and `model_config.json`.

In: a `GPT` and a folder (save), or a folder (load).
Out: the two files (save), or the rebuilt `GPT` with its weights (load).

Both architectures (`gpt2`, `llama`) save the same way; model_config.json records `arch` (a
file written before llama existed has none and loads as gpt2). Weights are safetensors only,
never pickle. A tied head (lm_head = wte) is one tensor in memory; it is stored once, under the
GPT-2 name `transformer.wte.weight`, and re-tied on load. Each file is written to a temporary
name and renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from pipeline.model.gpt import GPT, GPTConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TIED_HEAD = "lm_head.weight"


def save_model(model: GPT, folder: Path) -> Path:
    """Write folder/model.safetensors and folder/model_config.json; returns the folder."""
    model = getattr(model, "_orig_mod", model)  # a compiled module keeps the real one here
    return save_state_dict(model.state_dict(), model.config, folder)


def save_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig, folder: Path) -> Path:
    """Write a GPT's state dict (as `GPT.state_dict()` names it) and its config into `folder`.

    Keys are stored without the `_orig_mod.` that torch.compile wrappers insert, so a checkpoint
    never depends on whether compile was on.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_tmp = folder / f".{WEIGHTS_FILE}.tmp-{os.getpid()}"
    config_tmp = folder / f".{CONFIG_FILE}.tmp-{os.getpid()}"
    tensors = {
        name.replace("_orig_mod.", ""): t.detach().contiguous() for name, t in state_dict.items()
    }
    if config.tie_embeddings:
        tensors.pop(TIED_HEAD, None)  # the same storage as transformer.wte.weight
    safetensors.torch.save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    config_tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(weights_tmp, folder / WEIGHTS_FILE)
    os.replace(config_tmp, folder / CONFIG_FILE)
    return folder


def load_config(folder: Path) -> GPTConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {folder}")
    return GPTConfig(**json.loads(path.read_text(encoding="utf-8")))


def load_state_dict(folder: Path, config: GPTConfig, map_location: str = "cpu") -> dict:
    """The tensors of folder/model.safetensors as `GPT.state_dict()` names them (tied head added)."""
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {folder}")
    tensors = safetensors.torch.load_file(weights, device=map_location)
    if config.tie_embeddings:
        tensors[TIED_HEAD] = tensors["transformer.wte.weight"]
    return tensors


def load_weights(model: GPT, folder: Path, map_location: str = "cpu") -> GPT:
    """Load folder/model.safetensors into an existing GPT of the same shape (strict)."""
    tensors = load_state_dict(folder, model.config, map_location)
    model.load_state_dict(tensors, strict=True)  # copies into the parameters: the tie survives
    return model


def load_model(folder: Path, map_location: str = "cpu") -> GPT:
    """Rebuild the GPT saved in `folder` and load its weights (strict: every tensor must match)."""
    model = GPT(load_config(folder))
    return load_weights(model, folder, map_location).to(map_location)
