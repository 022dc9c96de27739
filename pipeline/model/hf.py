"""Hugging Face `transformers` interop: our checkpoints out as HF folders, HF folders in as GPTs.

Export, in: a model folder (`model.safetensors`, `model_config.json`, `tokenizer.json`).
Out: a folder that `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`
load: `config.json`, `model.safetensors`, `generation_config.json` and the tokenizer files.
`gpt2` models become `GPT2LMHeadModel`, `llama` models `LlamaForCausalLM`.

Import, in: a local HF folder of either kind (for example the `gpt2` checkpoint a user has
downloaded). Out: our `GPT` with the same weights and the tokenizer, or (`import_hf_model`) a
model folder that every llmpipe command and the training code can start from.

The mapping (after nanoGPT's `from_pretrained` and litgpt's converters):
- gpt2: the parameter names are the same; HF's GPT-2 uses `Conv1D` layers, whose weights are the
  transpose of `nn.Linear`'s. A model trained without biases exports zero biases (GPT-2 always
  has them). Our MLP's GELU is exact (`activation_function="gelu"`); OpenAI's GPT-2 uses the tanh
  approximation (`gelu_new`), which an imported model keeps (`GPTConfig.activation = "gelu_tanh"`).
- llama: our fused `attn.c_attn` splits into `q_proj`, `k_proj`, `v_proj`; `c_proj` is `o_proj`;
  `mlp.c_gate`/`c_fc`/`c_proj` are `gate_proj`/`up_proj`/`down_proj`; `ln_1`/`ln_2`/`ln_f` are
  the RMSNorms. Both use rotate-half RoPE, so no permutation of q/k is needed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from pipeline.model.checkpoint import load_model, save_model
from pipeline.model.gpt import GPT, GPTConfig
from pipeline.special_tokens import EOT_TOKEN, PAD_TOKEN

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# HF activation names -> ours; both tanh variants compute the same function.
GELU_NAMES = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


# ------------------------------------------------------------------------------------ export


def _gpt2_config(config: GPTConfig, common: dict[str, Any]) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.mlp_hidden,
        activation_function="gelu_new" if config.activation == "gelu_tanh" else "gelu",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.norm_eps,
        architectures=["GPT2LMHeadModel"],
        **common,
    )


def _llama_config(config: GPTConfig, common: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=config.n_embd,
        intermediate_size=config.mlp_hidden,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_head,
        head_dim=config.head_dim,
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_base},
        attention_bias=config.bias,
        mlp_bias=config.bias,
        attention_dropout=config.dropout,
        hidden_act="silu",
        architectures=["LlamaForCausalLM"],
        **common,
    )


def hf_config(config: GPTConfig, tokenizer: Tokenizer) -> Any:
    """The `transformers` config of the HF architecture that computes what `config` does."""
    eot = tokenizer.token_to_id(EOT_TOKEN)
    pad = tokenizer.token_to_id(PAD_TOKEN)
    common = {
        "vocab_size": config.vocab_size,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": pad,
        "tie_word_embeddings": config.tie_embeddings,
    }
    return family(config).config(config, common)


def llama_block_names(config: GPTConfig) -> dict[str, str]:
    """A llama block's parameters, our name -> HF Llama's (the fused q,k,v aside)."""
    names = {
        "ln_1.weight": "input_layernorm.weight",
        "ln_2.weight": "post_attention_layernorm.weight",
        "attn.c_proj.weight": "self_attn.o_proj.weight",
        "mlp.c_gate.weight": "mlp.gate_proj.weight",
        "mlp.c_fc.weight": "mlp.up_proj.weight",
        "mlp.c_proj.weight": "mlp.down_proj.weight",
    }
    if config.bias:  # the projections' biases; RMSNorm has none
        names.update(
            {
                ours.replace("weight", "bias"): theirs.replace("weight", "bias")
                for ours, theirs in names.items()
                if not ours.startswith("ln_")
            }
        )
    return names


def _gpt2_to_hf(config: GPTConfig, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: (v.t() if k.endswith(GPT2_CONV1D) else v).contiguous() for k, v in ours.items()}
    if not config.bias:  # GPT-2 has a bias on every Linear and LayerNorm: export zeros
        c, hidden = config.n_embd, config.mlp_hidden
        widths = {"ln_1": c, "ln_2": c, "attn.c_attn": 3 * c, "attn.c_proj": c}
        widths.update({"mlp.c_fc": hidden, "mlp.c_proj": c})
        for i in range(config.n_layer):
            for part, width in widths.items():
                out[f"transformer.h.{i}.{part}.bias"] = torch.zeros(width)
        out["transformer.ln_f.bias"] = torch.zeros(c)
    return out


def _llama_to_hf(config: GPTConfig, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    c = config.n_embd
    out = {
        "model.embed_tokens.weight": ours["transformer.wte.weight"],
        "model.norm.weight": ours["transformer.ln_f.weight"],
        "lm_head.weight": ours["lm_head.weight"],
    }
    for i in range(config.n_layer):
        ours_prefix, hf = f"transformer.h.{i}.", f"model.layers.{i}."
        for mine, theirs in llama_block_names(config).items():
            out[hf + theirs] = ours[ours_prefix + mine]
        for part in ("weight", "bias") if config.bias else ("weight",):
            q, k, v = ours[f"{ours_prefix}attn.c_attn.{part}"].split(c, dim=0)
            out[f"{hf}self_attn.q_proj.{part}"] = q.contiguous()
            out[f"{hf}self_attn.k_proj.{part}"] = k.contiguous()
            out[f"{hf}self_attn.v_proj.{part}"] = v.contiguous()
    return out


def to_hf_state_dict(net: GPT) -> dict[str, torch.Tensor]:
    """Our parameters under the HF architecture's names and layouts."""
    ours = {k: v.detach().float() for k, v in net.state_dict().items()}
    return family(net.config).to_hf(net.config, ours)


def hf_tokenizer(tokenizer: Tokenizer) -> Any:
    """Our `tokenizers` tokenizer as a `transformers` fast tokenizer (GPT-2 roles)."""
    from transformers import PreTrainedTokenizerFast

    roles: dict[str, str] = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN}
    if tokenizer.token_to_id(PAD_TOKEN) is not None:
        roles["pad_token"] = PAD_TOKEN
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **roles
    )


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `model_dir` (one of our model folders) as a Hugging Face folder in `out_dir`."""
    from transformers import AutoModelForCausalLM

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{model_dir}: tokenizer.json is missing beside the weights")
    net = load_model(model_dir)
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    config = hf_config(net.config, tokenizer)
    hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = to_hf_state_dict(net)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export mapping mismatch: missing {missing}, unexpected {unexpected}")
    out_dir.mkdir(parents=True, exist_ok=True)
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir() if p.is_file()}
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    hf_tokenizer(tokenizer).save_pretrained(out_dir)
    _permissions_from_umask(
        [p for p in out_dir.iterdir() if p.is_file() and before.get(p.name) != p.stat().st_mtime_ns]
    )
    return out_dir


def _permissions_from_umask(files: list[Path]) -> None:
    """Give written files the mode a new file gets here (0o666 less the umask): safetensors
    writes through a private temporary file, which left model.safetensors at 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in files:
        path.chmod(0o666 & ~umask)


# ------------------------------------------------------------------------------------ import


def _gpt2_from_hf_config(hf: Any) -> GPTConfig:
    activation = GELU_NAMES.get(hf.activation_function)
    if activation is None:
        raise ValueError(f"unsupported GPT-2 activation {hf.activation_function!r}")
    return GPTConfig(
        vocab_size=hf.vocab_size,
        block_size=hf.n_positions,
        n_layer=hf.n_layer,
        n_head=hf.n_head,
        n_embd=hf.n_embd,
        dropout=0.0,
        bias=True,
        tie_embeddings=bool(hf.tie_word_embeddings),
        arch="gpt2",
        mlp_hidden=hf.n_inner or 4 * hf.n_embd,
        norm_eps=hf.layer_norm_epsilon,
        activation=activation,
    )


def _llama_from_hf_config(hf: Any) -> GPTConfig:
    heads, kv_heads = hf.num_attention_heads, hf.num_key_value_heads or hf.num_attention_heads
    if kv_heads != heads:
        raise ValueError("grouped-query attention (num_key_value_heads < heads) is not supported")
    if getattr(hf, "head_dim", None) not in (None, hf.hidden_size // heads):
        raise ValueError("a head_dim other than hidden_size / heads is not supported")
    rope = getattr(hf, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope scaling {rope.get('rope_type')!r} is not supported")
    if bool(hf.attention_bias) != bool(getattr(hf, "mlp_bias", False)):
        raise ValueError("attention_bias and mlp_bias must agree")
    return GPTConfig(
        vocab_size=hf.vocab_size,
        block_size=hf.max_position_embeddings,
        n_layer=hf.num_hidden_layers,
        n_head=heads,
        n_embd=hf.hidden_size,
        dropout=0.0,
        bias=bool(hf.attention_bias),
        tie_embeddings=bool(hf.tie_word_embeddings),
        arch="llama",
        mlp_hidden=hf.intermediate_size,
        rope_base=float(rope.get("rope_theta", getattr(hf, "rope_theta", 10_000.0))),
        norm_eps=hf.rms_norm_eps,
    )


def _gpt2_from_hf(config: GPTConfig, state: dict[str, torch.Tensor]) -> dict:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            continue  # causal-mask buffers of older GPT-2 code
        out[name] = tensor.t().contiguous() if name.endswith(GPT2_CONV1D) else tensor
    if config.tie_embeddings:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def _llama_from_hf(config: GPTConfig, state: dict[str, torch.Tensor]) -> dict:
    out = {
        "transformer.wte.weight": state["model.embed_tokens.weight"],
        "transformer.ln_f.weight": state["model.norm.weight"],
        "lm_head.weight": state.get("lm_head.weight", state["model.embed_tokens.weight"]),
    }
    for i in range(config.n_layer):
        mine, hf = f"transformer.h.{i}.", f"model.layers.{i}."
        for ours_name, theirs in llama_block_names(config).items():
            out[mine + ours_name] = state[hf + theirs]
        for part in ("weight", "bias") if config.bias else ("weight",):
            out[f"{mine}attn.c_attn.{part}"] = torch.cat(
                [state[f"{hf}self_attn.{p}_proj.{part}"] for p in "qkv"], dim=0
            )
    return out


@dataclass(frozen=True)
class HFFamily:
    """One Hugging Face architecture and how our parameters map onto it."""

    model_type: str  # transformers' name
    config: Callable[[GPTConfig, dict[str, Any]], Any]
    to_hf: Callable[[GPTConfig, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    our_config: Callable[[Any], GPTConfig]
    from_hf: Callable[[GPTConfig, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


# Keyed by our presets (pipeline/model/config.py ARCH_PRESETS): a model exports to the family of
# the preset its blocks match.
HF_FAMILIES = {
    "gpt2": HFFamily("gpt2", _gpt2_config, _gpt2_to_hf, _gpt2_from_hf_config, _gpt2_from_hf),
    "llama": HFFamily("llama", _llama_config, _llama_to_hf, _llama_from_hf_config, _llama_from_hf),
}


def family(config: GPTConfig) -> HFFamily:
    """The Hugging Face architecture that computes what `config` does."""
    preset = config.preset()
    if preset not in HF_FAMILIES:
        raise ValueError(
            f"no Hugging Face architecture has these blocks (norm {config.norm}, position "
            f"{config.position}, mlp {config.mlp}, qk_norm {config.qk_norm}); exportable: "
            + ", ".join(f"arch {name}" for name in HF_FAMILIES)
        )
    return HF_FAMILIES[preset]


def _importer(model_type: str) -> HFFamily:
    for found in HF_FAMILIES.values():
        if found.model_type == model_type:
            return found
    kinds = " and ".join(f.model_type for f in HF_FAMILIES.values())
    raise ValueError(f"cannot import model_type {model_type!r} ({kinds} can be)")


def from_hf_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict:
    """HF parameters under our names and layouts (the inverse of `to_hf_state_dict`)."""
    return family(config).from_hf(config, state)


def import_hf(hf_dir: str | Path) -> tuple[GPT, Tokenizer]:
    """Our GPT (fp32, eval mode) and tokenizer from a local Hugging Face folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json (not a Hugging Face model folder)")
    hf_config_found = AutoConfig.from_pretrained(hf_dir)
    config = _importer(hf_config_found.model_type).our_config(hf_config_found)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    net = GPT(config)
    net.load_state_dict(from_hf_state_dict(hf_model.state_dict(), config), strict=True)
    net.eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir).backend_tokenizer
    return net, tokenizer


def import_hf_model(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """A Hugging Face folder rewritten as one of our model folders (weights, config, tokenizer)."""
    net, tokenizer = import_hf(hf_dir)
    out_dir = Path(out_dir)
    save_model(net, out_dir)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (Path(hf_dir) / name).is_file():
            shutil.copyfile(Path(hf_dir) / name, out_dir / name)
    (out_dir / "imported_from.json").write_text(
        json.dumps({"hf_dir": str(Path(hf_dir).resolve())}, indent=2) + "\n", encoding="utf-8"
    )
    return out_dir
