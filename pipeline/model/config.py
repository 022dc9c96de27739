"""A GPT's shape and blocks, without torch: `GPTConfig` and the `arch` presets.

In: the model fields (from the `model` section of a pipeline config, a checkpoint's
model_config.json, or a Hugging Face config). Out: a checked `GPTConfig`, every block field
filled (a preset's values where a field was left None), and `preset()`, the preset a model's
blocks match exactly. pipeline/model/gpt.py builds the modules from it; pipeline.config's
ModelConfig validates through it, so a shape is checked in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# `arch` names one of these presets of the block fields; a field set explicitly overrides it.
ARCH_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {"norm": "layernorm", "position": "learned", "mlp": "gelu", "bias": True},
    "llama": {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "bias": False},
}
ARCHITECTURES = tuple(ARCH_PRESETS)
POSITIONS = ("learned", "rope")
NORMS = {"layernorm", "rmsnorm"}  # the module for each: pipeline/model/gpt.py NORM_MODULES
# the default hidden width of each MLP (the modules: pipeline/model/gpt.py MLP_MODULES); a new
# block is registered with pipeline.model.gpt.register_mlp / register_norm
MLP_WIDTH = {"gelu": lambda n_embd: 4 * n_embd, "swiglu": lambda n_embd: int(8 * n_embd / 3)}


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool | None = None  # None: the preset's
    tie_embeddings: bool = True
    arch: str = "gpt2"  # the preset that fills the block fields left None
    norm: str | None = None  # layernorm | rmsnorm
    position: str | None = None  # learned | rope
    mlp: str | None = None  # gelu | swiglu
    qk_norm: bool = False
    mlp_hidden: int | None = None  # None: the MLP's default width (MLP_WIDTH)
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5
    activation: str = "gelu"  # gelu MLP: "gelu" (exact) or "gelu_tanh" (OpenAI GPT-2)
    init: str = "gpt2"  # "gpt2", or "zero_out": residual output projections start at zero

    def __post_init__(self) -> None:
        """Fill the block fields from the preset, then check the shape: the one place that
        validates a model (pipeline.config.ModelConfig asks this class)."""
        if self.arch not in ARCH_PRESETS:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {self.arch!r}")
        for name, value in ARCH_PRESETS[self.arch].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, allowed in (("norm", NORMS), ("position", POSITIONS), ("mlp", MLP_WIDTH)):
            if getattr(self, name) not in allowed:
                choices = ", ".join(sorted(allowed))
                raise ValueError(f"{name} must be one of {choices}, not {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("rope positions need an even head size (n_embd / n_head)")
        if self.init not in ("gpt2", "zero_out"):
            raise ValueError(f"init must be gpt2 or zero_out, not {self.init!r}")
        if self.mlp_hidden is None:
            self.mlp_hidden = MLP_WIDTH[self.mlp](self.n_embd)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_model_config(cls, model_config: Any, vocab_size: int) -> GPTConfig:
        """From `pipeline.config.ModelConfig` (or any object/dict with the same fields)."""
        fields = dict(model_config if isinstance(model_config, dict) else model_config.model_dump())
        return cls(vocab_size=vocab_size, **fields)

    def preset(self) -> str | None:
        """The preset whose blocks this model has exactly (what a Hugging Face export maps to)."""
        blocks = ("norm", "position", "mlp")  # bias and tying map onto either family
        for name, fields in ARCH_PRESETS.items():
            if not self.qk_norm and all(getattr(self, k) == fields[k] for k in blocks):
                return name
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
