"""LoRA adapters on tiny GPTs of both architectures: the adapted model starts as the original
function, only the adapters train (and the frozen weights stay bit-identical), merging gives the
same logits with the original state-dict keys, and the merged model saves and loads as a GPT."""

from __future__ import annotations

import pytest
import torch

from pipeline.model import GPT, GPTConfig, load_model, save_model
from pipeline.model.lora import LoRALinear, add_lora, has_lora, merge_lora

TARGETS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "mlp.c_gate"]
ARCHS = ["gpt2", "llama"]


def tiny_gpt(arch: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, arch=arch)
    return GPT(config).eval()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(seed))
    return idx, idx.roll(-1, dims=1)


def train_steps(model: GPT, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        _, loss = model(*batch(seed=10 + step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_adapted_model_starts_as_the_original_function(arch):
    model = tiny_gpt(arch)
    idx, _ = batch()
    with torch.no_grad():
        before = model(idx)[0]
        add_lora(model, rank=4, alpha=8, dropout=0.0, targets=TARGETS)
        after = model(idx)[0]
    assert has_lora(model)
    assert torch.equal(before, after)  # B = 0: the update adds exact zeros


@pytest.mark.parametrize(("arch", "expected"), [("gpt2", 4096), ("llama", 4344)])
def test_only_the_adapters_are_trainable(arch, expected):
    model = tiny_gpt(arch)
    count = add_lora(model, rank=4, alpha=8, dropout=0.0, targets=TARGETS)
    # rank 4 * (in + out) per layer; gpt2: c_attn 32+96, attn.c_proj 32+32, c_fc 32+128,
    # mlp.c_proj 128+32 -> 2048; llama (hidden 85, no c_gate in gpt2): 128+64+3*117 -> 2172
    adapted = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert count == expected
    assert count == sum(4 * (m.base.in_features + m.base.out_features) for m in adapted)
    assert len(adapted) == (4 if arch == "gpt2" else 5) * 2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for n in trainable)
    assert not model.transformer.wte.weight.requires_grad
    assert not isinstance(model.lm_head, LoRALinear)
    a = adapted[0]
    assert a.lora_A.shape == (4, a.base.in_features) and a.lora_A.abs().sum() > 0
    assert a.lora_B.shape == (a.base.out_features, 4) and not a.lora_B.any()
    assert a.scale == 2.0


@pytest.mark.parametrize("arch", ARCHS)
def test_training_moves_only_the_adapters_and_merging_keeps_the_function(arch, tmp_path):
    model = tiny_gpt(arch)
    original_keys = list(model.state_dict())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx, _ = batch()
    with torch.no_grad():
        before = model(idx)[0]
    add_lora(model, rank=4, alpha=8, dropout=0.0, targets=TARGETS)
    train_steps(model)

    with torch.no_grad():
        adapted = model(idx)[0]
    assert not torch.allclose(adapted, before)
    for name, param in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, frozen[name.replace(".base.", ".")]), name

    merge_lora(model)
    assert not has_lora(model)
    assert list(model.state_dict()) == original_keys
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie survives
    with torch.no_grad():
        merged = model(idx)[0]
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)

    loaded = load_model(save_model(model, tmp_path / "merged")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], merged)


def test_merge_keeps_dtype_and_targets_match_name_suffixes():
    model = tiny_gpt("gpt2").to(torch.bfloat16)
    add_lora(model, rank=2, alpha=2, dropout=0.0, targets=["c_proj"])  # attn and mlp c_proj
    names = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert names == {f"transformer.h.{i}.{p}.c_proj" for i in range(2) for p in ("attn", "mlp")}
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    merge_lora(model)
    assert all(type(model.get_submodule(n)) is torch.nn.Linear for n in names)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_no_matching_target_is_an_error():
    model = tiny_gpt("gpt2")
    with pytest.raises(ValueError, match="mlp.c_gate"):
        add_lora(model, rank=4, alpha=8, dropout=0.0, targets=["mlp.c_gate"])  # llama only
    with pytest.raises(ValueError, match="lm_head"):
        add_lora(model, rank=4, alpha=8, dropout=0.0, targets=["lm_head", "wte"])  # never adapted
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen
    add_lora(model, rank=4, alpha=8, dropout=0.0, targets=TARGETS)
    with pytest.raises(ValueError, match="already"):
        add_lora(model, rank=4, alpha=8, dropout=0.0, targets=TARGETS)


def test_dropout_applies_in_train_mode_only():
    model = tiny_gpt("llama")
    add_lora(model, rank=4, alpha=8, dropout=0.5, targets=TARGETS)
    for module in model.modules():  # a non-zero update, so dropout on its input shows
        if isinstance(module, LoRALinear):
            torch.nn.init.normal_(module.lora_B, std=0.1)
    idx, targets = batch()
    model.train()
    first, loss = model(idx, targets)
    assert not torch.allclose(first, model(idx)[0])
    loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx)[0], model(idx)[0])
