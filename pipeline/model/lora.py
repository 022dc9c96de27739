"""Low-rank adapters (LoRA, Hu et al. 2021) for the GPT's linear projections.

In: a model (a `GPT`), the adapter rank, alpha, dropout and the projection names to adapt
(suffixes of module names, e.g. `attn.c_attn`, `mlp.c_proj`).
Out: `add_lora` wraps each matching `nn.Linear` in place in a `LoRALinear` (y = W x + b +
(alpha / rank) * B A dropout(x)) and freezes every other parameter; `merge_lora` folds B A back
into W, so the model is again a plain GPT whose state dict, and checkpoint, has the original keys.

As Hugging Face peft: A starts kaiming-uniform (a = sqrt(5)), B at zero, so an adapted model
computes exactly the original function until it trains. The token embedding and the (tied)
output head never get adapters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` (`.base`) plus a trainable low-rank update `scale * B @ A`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be positive, not {rank}")
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's (and peft's) init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scale * update

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """`.base` with W + scale * B @ A written into its weight (computed in float32)."""
        weight = self.base.weight
        delta = self.scale * (self.lora_B.float() @ self.lora_A.float())
        weight.copy_((weight.float() + delta).to(weight.dtype))
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}"


def _is_target(name: str, targets: Sequence[str]) -> bool:
    # a suffix at a name boundary: "c_proj" matches "attn.c_proj", "mlp.c_proj", not "xc_proj"
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float,
    targets: Sequence[str],
    train_embeddings: bool = False,
) -> int:
    """Adapt every `nn.Linear` whose name ends with a target; freeze the rest (but the
    embeddings, and the head tied to the token embedding, with `train_embeddings`).

    Returns the number of trainable parameters (the adapters' rank * (in + out) each, plus the
    embeddings when they train).
    Raises ValueError when no module matched or the model already has adapters.
    """
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters")
    # A linear that shares its weight with an embedding is the tied head: never adapted.
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    matches = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name != "lm_head"
        and id(module.weight) not in embeddings
        and _is_target(name, targets)
    ]
    if not matches:
        raise ValueError(f"no linear layer matches the LoRA targets {list(targets)}")
    model.requires_grad_(False)
    for name, module in matches:
        _replace(model, name, LoRALinear(module, rank, alpha, dropout))
    if train_embeddings:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.weight.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain `nn.Linear` back (in place).

    The merged layers stay frozen (requires_grad False) like the rest of the adapted model.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.merged())
    return model


# module names under FSDP or torch.compile wrappers; state-dict names carry none of them
_WRAPPERS = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (as `model.state_dict()` names it) with each adapter folded into its base weight,
    as `merge_lora` does, leaving the model alone: the plain GPT's keys. No adapters: `state`."""
    state = dict(state)
    for wrapped_name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            name = _WRAPPERS.sub("", wrapped_name)  # as the state dict names it
            lora_a, lora_b = state.pop(f"{name}.lora_A"), state.pop(f"{name}.lora_B")
            weight = state.pop(f"{name}.base.weight")
            delta = module.scale * (lora_b.float() @ lora_a.float())
            state[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype)
            if f"{name}.base.bias" in state:
                state[f"{name}.bias"] = state.pop(f"{name}.base.bias")
    return state


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
