"""GPT model: shapes, loss, learning, generation, FLOPs, safetensors save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.model import GPT, IGNORE_INDEX, GPTConfig, load_model, save_model


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    fields.update(overrides)
    return GPTConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT(tiny_config(**overrides)).eval()


def test_forward_shapes_and_loss_is_mean_cross_entropy():
    model = tiny_model()
    idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 64)
    assert loss is None

    targets = idx.roll(-1, dims=1)
    targets[:, -4:] = IGNORE_INDEX  # ignored positions add nothing to the mean
    logits, loss = model(idx, targets)
    keep = targets != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert loss.shape == ()
    assert torch.allclose(loss, expected, atol=1e-6)
    # an untrained model is close to uniform over the vocabulary
    assert abs(loss.item() - math.log(64)) < 0.5


def test_shorter_sequences_work_and_longer_ones_are_refused():
    model = tiny_model()
    logits, _ = model(torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 64)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_causal_attention_future_tokens_do_not_change_past_logits():
    model = tiny_model()
    idx = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 64
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_tied_embeddings_share_one_tensor():
    tied = tiny_model()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = tiny_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_overfits_a_tiny_batch():
    model = tiny_model(seed=3).train()
    gen = torch.Generator().manual_seed(4)
    idx = torch.randint(0, 64, (4, 16), generator=gen)
    targets = torch.randint(0, 64, (4, 16), generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    _, first = model(idx, targets)
    for _ in range(80):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first.item() > 3.5
    assert loss.item() < 0.5 * first.item()


def test_gpt2_small_parameter_count_and_flops():
    # GPT-2 124M: the numbers nanoGPT prints (124.44M total, 123.65M without wpe).
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    with torch.device("meta"):
        model = GPT(config)
    assert model.num_params(non_embedding=False) == 124_439_808
    assert model.num_params() == 124_439_808 - 1024 * 768
    attention = 12 * 12 * 12 * 64 * 1024
    assert model.flops_per_token() == 6 * model.num_params() + attention
    # ~0.86 GFLOP per token at T=1024 (anchors-training.md §5)
    assert 0.85e9 < model.flops_per_token() < 0.87e9


def test_flops_per_token_grows_with_depth_context_and_untying():
    base = tiny_model()
    assert base.flops_per_token() > 0
    assert tiny_model(n_layer=4).flops_per_token() > base.flops_per_token()
    assert tiny_model(block_size=32).flops_per_token() > base.flops_per_token()
    untied = tiny_model(tie_embeddings=False)
    # untied: the head is a separate matmul, the token embedding a lookup: the same matmul count
    assert untied.num_params() == base.num_params()
    assert untied.num_params(non_embedding=False) == base.num_params(non_embedding=False) + 64 * 32


def test_generate_length_greedy_and_seeded_sampling():
    model = tiny_model()
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(5))
    greedy = model.generate(prompt, 12, temperature=0)
    assert greedy.shape == (2, 17)
    assert torch.equal(greedy[:, :5], prompt)
    assert torch.equal(greedy, model.generate(prompt, 12, temperature=0))

    def sample(seed):
        gen = torch.Generator().manual_seed(seed)
        return model.generate(prompt, 12, temperature=1.0, top_k=8, generator=gen)

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))
    # longer than block_size: the context is cropped, generation goes on
    assert model.generate(prompt, 30, temperature=0).shape == (2, 35)


def test_top_k_one_is_greedy():
    model = tiny_model()
    prompt = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(0)
    sampled = model.generate(prompt, 8, temperature=1.0, top_k=1, generator=gen)
    assert torch.equal(sampled, model.generate(prompt, 8, temperature=0))


def test_generate_stops_when_every_row_produced_eos():
    model = tiny_model()
    prompt = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(6))
    free = model.generate(prompt, 6, temperature=0)
    eos = int(free[0, 4])  # the first token row 0 produces: call it end-of-text
    out = model.generate(prompt, 6, temperature=0, eos_id=eos)
    assert out[0, 4] == eos
    assert (out[0, 4:] == eos).all()  # a finished row only gets eos afterwards
    if (free[1, 4:] != eos).all():  # row 1 never produces eos: it runs to the end
        assert out.shape == (2, 10)
        assert torch.equal(out[1], free[1])

    both = prompt[:1].repeat(2, 1)  # both rows produce eos first: stop after one token
    assert model.generate(both, 6, temperature=0, eos_id=eos).shape == (2, 5)


@pytest.mark.parametrize("tied", [True, False])
def test_save_load_roundtrip_gives_equal_logits(tmp_path, tied):
    model = tiny_model(seed=11, tie_embeddings=tied, bias=False, dropout=0.1)
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "model.safetensors",
        "model_config.json",
    ]
    config = json.loads((tmp_path / "m" / "model_config.json").read_text())
    assert config == tiny_config(tie_embeddings=tied, bias=False, dropout=0.1).to_dict()

    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config == model.config
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == tied
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(12))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_safetensors_file_stores_a_tied_weight_once(tmp_path):
    from safetensors import safe_open

    save_model(tiny_model(), tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "transformer.wte.weight" in keys
    assert "lm_head.weight" not in keys


def test_load_model_refuses_mismatched_weights(tmp_path):
    save_model(tiny_model(), tmp_path)
    config = json.loads((tmp_path / "model_config.json").read_text())
    config["n_embd"] = 64
    (tmp_path / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_model(tmp_path)


def test_config_from_pipeline_model_config():
    config = GPTConfig.from_model_config(ModelConfig(n_layer=3, n_head=4, n_embd=64), 300)
    assert (config.vocab_size, config.n_layer, config.n_head, config.n_embd) == (300, 3, 4, 64)
    assert config.block_size == ModelConfig().block_size
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=3, n_embd=32)
