"""A GPT language model in one readable file (after nanoGPT's model.py), built from blocks.

In: a `GPTConfig` (vocabulary size, context length, depth, width, and the blocks).
Out: `GPT`, an `nn.Module` that maps token ids (B, T) to next-token logits (B, T, vocab) and,
given targets, a mean cross-entropy loss; `generate` samples continuations with a KV cache;
`num_params` and `flops_per_token` give the size and the training FLOPs estimate used for MFU.

The blocks are config fields (as litgpt's `mlp_class_name`), each looked up in its table:
  - `norm`: `layernorm` or `rmsnorm` (NORM_MODULES);
  - `position`: `learned` (a position embedding) or `rope` (rotary embeddings on queries and
    keys);
  - `mlp`: `gelu` (4x wide) or `swiglu` (silu(gate(x)) * up(x), 8/3 x wide so the parameter
    count matches) (MLP_MODULES);
  - `bias` on the linear layers, `tie_embeddings` (the head shares the token embedding),
    `qk_norm` (RMSNorm on each head's queries and keys before attention, as OLMo 2).
`arch` names a preset of those fields (ARCH_PRESETS): `gpt2` (GPT-2 / nanoGPT: LayerNorm, learned
positions, GELU, biases) and `llama` (RMSNorm, RoPE, SwiGLU, no biases); a field given
explicitly overrides the preset. Attention is causal `F.scaled_dot_product_attention` (flash /
memory-efficient kernels where the device has them). Initialisation follows GPT-2: N(0, 0.02)
everywhere, with the projections into the residual stream scaled by 1/sqrt(2 * n_layer).

Parameter names follow GPT-2 (`transformer.wte`, `transformer.h.{i}.attn.c_attn` = fused q,k,v,
`attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`, `ln_1`, `ln_2`, `transformer.ln_f`, `lm_head`); the llama
MLP adds `mlp.c_gate` (Llama's gate_proj; `c_fc` is up_proj, `c_proj` down_proj). RoPE uses the
rotate-half convention of Hugging Face's Llama, so q/k weights export without permutation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.model.config import ARCH_PRESETS, ARCHITECTURES, MLP_WIDTH, NORMS, GPTConfig

__all__ = ["ARCH_PRESETS", "ARCHITECTURES", "GPT", "GPTConfig", "IGNORE_INDEX", "KVCache"]

IGNORE_INDEX = -100  # target id that contributes no loss (padding, masked prompts)


# ---------------------------------------------------------------------------------- pieces


def rope_tables(config: GPTConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (length, head_dim), rotate-half layout."""
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, half, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys by their positions' angles (cos, sin: (T, D))."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # query, key and value for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:  # per head, over head_dim: keeps attention logits bounded
            self.q_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        start_pos: int = 0,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # generation: keep this step's keys/values, attend to all so far
            k_cache, v_cache = cache
            k_cache[:, :, start_pos : start_pos + T] = k
            v_cache[:, :, start_pos : start_pos + T] = v
            k, v = k_cache[:, :, : start_pos + T], v_cache[:, :, : start_pos + T]
        # A block of T > 1 new tokens starts at position 0 (training, a prefill): causal mask.
        # One new token attends to every cached position: no mask. Packed rows bring their own
        # mask (causal within each example).
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=T > 1 and attn_mask is None,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GELU MLP (`mlp: gelu`, GPT-2's)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class SwiGLU(nn.Module):
    """SwiGLU MLP (`mlp: swiglu`, Llama's): c_proj(silu(c_gate(x)) * c_fc(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x)))


# The blocks a config can name (`mlp:`, `norm:`), each built from the GPTConfig.
MLP_MODULES: dict[str, Callable[[GPTConfig], nn.Module]] = {"gelu": MLP, "swiglu": SwiGLU}
NORM_MODULES: dict[str, Callable[[GPTConfig], nn.Module]] = {
    "layernorm": lambda c: nn.LayerNorm(c.n_embd, eps=c.norm_eps, bias=c.bias),
    "rmsnorm": lambda c: nn.RMSNorm(c.n_embd, eps=c.norm_eps),
}


def register_mlp(
    name: str, module: Callable[[GPTConfig], nn.Module], width: Callable[[int], int]
) -> None:
    """A new MLP block: `module(config)` builds it, `width(n_embd)` is its default hidden width
    (`mlp_hidden`). A model config picks it with `mlp: NAME` (add NAME to ModelConfig.mlp)."""
    MLP_MODULES[name] = module
    MLP_WIDTH[name] = width


def register_norm(name: str, module: Callable[[GPTConfig], nn.Module]) -> None:
    """A new normalization: `module(config)` builds one over n_embd; `norm: NAME` picks it."""
    NORM_MODULES[name] = module
    NORMS.add(name)


def make_norm(config: GPTConfig) -> nn.Module:
    return NORM_MODULES[config.norm](config)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP_MODULES[config.mlp](config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        start_pos: int = 0,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, start_pos, attn_mask)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Keys and values of every layer for generation: (n_layer, B, n_head, block_size, head_dim)."""

    def __init__(self, config: GPTConfig, batch: int, device: torch.device, dtype: torch.dtype):
        shape = (config.n_layer, batch, config.n_head, config.block_size, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]


# ------------------------------------------------------------------------------------ model


def segment_positions_and_mask(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For packed rows (B, T) of segment ids: each token's position within its segment (B, T),
    and the attention mask (B, 1, T, T), True where a token may attend (earlier or itself, same
    segment). Segments are runs of equal ids."""
    B, T = segment_ids.shape
    steps = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, steps, torch.zeros_like(steps)).cummax(dim=1).values
    same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    return steps - first, (same & causal).unsqueeze(1)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules: dict[str, nn.Module] = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.position == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if config.position == "rope":
            # derived from the config, so not saved (persistent=False)
            cos, sin = rope_tables(config, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (also usable after building the model on the meta device)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm | nn.RMSNorm):
                module.reset_parameters()
        # Scale the projections into the residual stream by 1/sqrt(2 * n_layer), so the
        # residual's variance does not grow with depth. `zero_out` starts them at zero (each
        # block begins as the identity, as in modded-nanogpt).
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if self.config.init == "zero_out":
                    nn.init.zeros_(param)
                else:
                    nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
        if self.config.position == "rope" and self.rope_cos.device.type != "meta":
            self.rope_cos, self.rope_sin = (
                t.to(self.rope_cos.device) for t in rope_tables(self.config, self.config.block_size)
            )

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; `non_embedding` leaves out the lookup-only embeddings.

        The position embedding (gpt2) is always a lookup. The token embedding is a lookup too,
        unless it is tied to the head, where it is also the output matmul and so counts.
        """
        total = sum(p.numel() for p in self.parameters())  # a tied weight is counted once
        if non_embedding:
            if "wpe" in self.transformer:
                total -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.transformer.wte.weight.numel()
        return total

    def flops_per_token(self) -> int:
        """Training FLOPs (forward + backward) per token at full context, as nanoGPT's estimate_mfu.

        6 N for the weight matmuls (2 forward, 4 backward) plus 12 L H Q T for the attention
        scores and values (PaLM appendix B; causality not discounted).
        """
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * c.head_dim * c.block_size

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start_pos: int = 0,
        segment_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids at positions start_pos.. (<= block_size in all).

        Returns (logits (B, T, V), mean cross-entropy against targets or None; targets equal to
        IGNORE_INDEX count for nothing). With a `cache`, the keys and values of these positions
        are stored in it (generation). `segment_ids` (B, T) packs several sequences in a row:
        a token attends only to earlier tokens of its own segment, and positions restart at 0
        at each segment's first token, so each example sees exactly what it would see alone.
        """
        B, T = idx.shape
        if start_pos + T > self.config.block_size:
            raise ValueError(
                f"sequence length {start_pos + T} exceeds block_size {self.config.block_size}"
            )
        if cache is not None and T > 1 and start_pos != 0:
            raise ValueError("a block of several tokens can only be cached from position 0")
        x = self.transformer.wte(idx)
        pos = torch.arange(start_pos, start_pos + T, dtype=torch.long, device=idx.device)
        attn_mask = None
        if segment_ids is not None:
            pos, attn_mask = segment_positions_and_mask(segment_ids)
        rope = None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(pos)
        elif segment_ids is not None:  # per-row positions: (B, 1, T, D) tables
            rope = (self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1))
        else:
            rope = (
                self.rope_cos[start_pos : start_pos + T],
                self.rope_sin[start_pos : start_pos + T],
            )
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            layer_cache = cache.layer(i) if cache is not None else None
            x = block(x, rope, layer_cache, start_pos, attn_mask)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return logits, loss

    # ------------------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        *,
        top_p: float | None = None,
        stop_ids: Iterable[int] = (),
        seed: int | None = None,
        use_cache: bool = True,
        repetition_penalty: float = 1.0,
        on_token: Callable[[torch.Tensor], bool | None] | None = None,
    ) -> torch.Tensor:
        """Append up to `max_new_tokens` sampled ids to each row of idx (B, T); returns (B, T + n).

        temperature 0 picks the most likely token (greedy); otherwise the logits are divided by
        the temperature, cut to the `top_k` most likely tokens and to the smallest set whose
        probability reaches `top_p` (nucleus), and sampled with `generator` (or a new one seeded
        with `seed`). A row that produces `eos_id` or one of `stop_ids` is finished: it keeps
        receiving that stop token, and generation ends once every row is.

        `repetition_penalty` > 1 makes every token already in the row (prompt included) less
        likely, before greedy or sampled choice (CTRL, Keskar et al. 2019, as transformers
        applies it: a positive logit is divided by the penalty, a negative one multiplied). A
        small model otherwise tends to loop on its likeliest phrase ("the 1999999...").

        The KV cache holds up to block_size positions; when it is full, the oldest quarter of
        the context is dropped and the cache is rebuilt from the rest (a sliding window that
        moves in jumps). `use_cache=False` recomputes the last block_size tokens every step.

        `on_token`, when given, is called with each step's new ids (B,) as they are sampled (a
        server streams them); when it returns True, generation stops there.
        """
        stops = ([eos_id] if eos_id is not None else []) + [int(s) for s in stop_ids]
        if generator is None and seed is not None:
            generator = torch.Generator(device=idx.device).manual_seed(seed)
        block = self.config.block_size
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        stop_tensor = torch.tensor(stops, dtype=idx.dtype, device=idx.device)
        cache: KVCache | None = None
        cached = 0  # positions held in the cache
        # `self.forward`, not `self(...)`: a model compiled in place for training would
        # recompile for every generation shape; sampling runs eagerly.
        forward = self.forward
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = forward(idx[:, -block:])
            elif cache is None or cached >= block:
                # (re)fill: the whole context on the first step, then the last 3/4 of a block
                keep = block if cache is None else max(1, block - block // 4)
                context = idx[:, -keep:]
                if cache is None:
                    dtype = next(self.parameters()).dtype
                    cache = KVCache(self.config, idx.size(0), idx.device, dtype)
                logits, _ = forward(context, cache=cache, start_pos=0)
                cached = context.size(1)
            else:
                logits, _ = forward(idx[:, -1:], cache=cache, start_pos=cached)
                cached += 1
            last = logits[:, -1, :].float()
            if repetition_penalty != 1.0:
                last = self.penalize_repeats(last, idx, repetition_penalty)
            next_id = self._sample(last, temperature, top_k, top_p, generator)
            if stops:  # a finished row repeats the stop token it ended with
                next_id = torch.where(finished.unsqueeze(1), idx[:, -1:], next_id)
                finished |= torch.isin(next_id.squeeze(1), stop_tensor)
            idx = torch.cat((idx, next_id), dim=1)
            if on_token is not None and on_token(next_id.squeeze(1)):
                break
            if stops and bool(finished.all()):
                break
        return idx

    @staticmethod
    def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
        """(B, V) logits with the ids in each row of `seen` (B, T) made less likely: divided by
        `penalty` where positive, multiplied where negative (each id once, however often)."""
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, not {penalty}")
        scores = torch.gather(logits, 1, seen)
        scores = torch.where(scores < 0, scores * penalty, scores / penalty)
        return logits.scatter(1, seen, scores)

    @staticmethod
    def _sample(
        logits: torch.Tensor,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """One id per row from (B, V) logits: greedy at temperature 0, else top-k/top-p sampling."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # drop a token when the ones before it already reach top_p (the first always stays)
            drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
            drop = drop_sorted.scatter(1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)
