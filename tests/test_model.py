"""GPT model, both architectures: shapes, loss, causality, learning, generation with a KV cache,
top-k/top-p/stop tokens, FLOPs and parameter counts, safetensors save/load."""

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


def test_repetition_penalty_scales_the_logits_of_seen_tokens_once():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]])
    seen = torch.tensor([[0, 1, 1], [2, 2, 2]])  # row 0 saw ids 0 and 1 (1 twice); row 1: id 2
    out = GPT.penalize_repeats(logits, seen, 2.0)
    assert torch.allclose(out, torch.tensor([[1.0, -2.0, 0.5, 3.0], [1.0, 1.0, -4.0, 0.0]]))
    assert torch.equal(GPT.penalize_repeats(logits, seen, 1.0), logits)
    with pytest.raises(ValueError):
        GPT.penalize_repeats(logits, seen, 0.0)


def test_repetition_penalty_breaks_a_greedy_loop():
    """A model that always prefers one token: greedy says it for ever (a small model's "the
    1999999..."); with the penalty, once said, the runner-up can win."""
    model = tiny_model()
    favourite = torch.zeros(model.config.vocab_size)
    favourite[9], favourite[10], favourite[11] = 3.0, 2.0, 1.0

    def scripted(idx, cache=None, start_pos=0, **_):
        return favourite.expand(idx.size(0), idx.size(1), -1), None

    model.forward = scripted
    prompt = torch.tensor([[3, 4]])
    assert model.generate(prompt, 6, temperature=0)[0, 2:].tolist() == [9] * 6
    penalized = model.generate(prompt, 6, temperature=0, repetition_penalty=2.0)[0, 2:].tolist()
    # 9 said: 3/2 < 2, so 10; then both said: 3/2 > 2/2, so 9 (each id penalized once)
    assert penalized == [9, 10, 9, 9, 9, 9]
    assert torch.equal(
        model.generate(prompt, 6, temperature=0, repetition_penalty=1.0),
        model.generate(prompt, 6, temperature=0),
    )


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


# ------------------------------------------------------------------------ llama architecture


def test_llama_has_rope_rmsnorm_swiglu_and_no_biases():
    model = tiny_model(arch="llama", bias=False)
    assert "wpe" not in model.transformer
    block = model.transformer.h[0]
    assert isinstance(block.ln_1, torch.nn.RMSNorm)
    assert block.mlp.c_gate.weight.shape == (model.config.mlp_hidden, 32)
    assert model.config.mlp_hidden == int(8 * 32 / 3)
    assert not [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    # RoPE tables are derived, never saved
    assert not [k for k in model.state_dict() if "rope" in k]


def test_parameter_counts_match_the_reference_char_models():
    # anchor-runs.md: nanoGPT's CPU Shakespeare model, 4 x 128, vocab 65, tied
    shape = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    gpt2 = GPT(GPTConfig(**shape, bias=False))
    llama = GPT(GPTConfig(**shape, arch="llama", bias=False))
    assert gpt2.num_params(non_embedding=False) == 804_096
    assert llama.num_params(non_embedding=False) == 795_392
    assert llama.num_params() == 795_392  # no position embedding; the tied head counts
    assert llama.flops_per_token() == 6 * 795_392 + 12 * 4 * 4 * 32 * 64


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_both_architectures_are_causal_and_learn(arch):
    model = tiny_model(arch=arch)
    idx = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 64
    a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])

    model.train()
    targets = idx.roll(-1, dims=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(idx, targets)[1].item()
    for _ in range(40):
        loss = model(idx, targets)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


def test_rope_makes_attention_depend_on_relative_position():
    # The same 6 tokens at positions 0.. and at positions 5..: with RoPE the keys and queries
    # rotate together, so the attention output at the last position is the same.
    from pipeline.model.gpt import apply_rope, rope_tables

    config = tiny_config(arch="llama")
    cos, sin = rope_tables(config, 16)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 6, 16, generator=gen), torch.randn(1, 1, 6, 16, generator=gen)
    scores = [
        apply_rope(q, cos[s : s + 6], sin[s : s + 6])
        @ apply_rope(k, cos[s : s + 6], sin[s : s + 6]).mT
        for s in (0, 5)
    ]
    assert torch.allclose(scores[0], scores[1], atol=1e-5)
    assert not torch.allclose(q @ k.mT, scores[0])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_generation_equals_recomputing_the_context(arch):
    model = tiny_model(seed=4, arch=arch)
    prompt = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(5))
    cached = model.generate(prompt, 11, temperature=0)  # 16 = block_size: one cache fill
    plain = model.generate(prompt, 11, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)
    # the cached step's logits are the full forward's, position by position
    from pipeline.model.gpt import KVCache

    cache = KVCache(model.config, 3, prompt.device, torch.float32)
    logits = [model(cached[:, :5], cache=cache)[0][:, -1]]
    for t in range(5, 15):
        logits.append(model(cached[:, t : t + 1], cache=cache, start_pos=t)[0][:, -1])
    full = model(cached[:, :15])[0][:, 4:15]
    assert torch.allclose(torch.stack(logits, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generation_goes_past_block_size_with_a_sliding_cache(arch):
    model = tiny_model(arch=arch)
    prompt = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(6))
    out = model.generate(prompt, 40, temperature=0.9, seed=3)
    assert out.shape == (2, 44)
    assert torch.equal(out, model.generate(prompt, 40, temperature=0.9, seed=3))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        seen.add(int(GPT._sample(logits, 1.0, None, 0.75, gen)))
    assert seen == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3
    seen = {int(GPT._sample(logits, 1.0, None, 0.5, gen)) for _ in range(100)}
    assert seen == {0}
    seen = {int(GPT._sample(logits, 1.0, None, 0.99, gen)) for _ in range(2000)}
    assert seen == {0, 1, 2, 3}


def test_stop_ids_end_rows_like_eos():
    model = tiny_model()
    prompt = torch.randint(0, 64, (1, 4), generator=torch.Generator().manual_seed(6))
    free = model.generate(prompt, 6, temperature=0)
    stop = int(free[0, 6])  # the third new token, maybe produced earlier already
    first = free[0, 4:].tolist().index(stop)
    out = model.generate(prompt, 6, temperature=0, stop_ids=[stop])
    assert out.shape == (1, 4 + first + 1) and int(out[0, -1]) == stop
    assert torch.equal(out[0], free[0, : 4 + first + 1])
    # a stop id and an eos id together: whichever comes first ends the row
    assert model.generate(prompt, 6, temperature=0, eos_id=63, stop_ids=[stop]).shape == out.shape


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_save_load_roundtrip_records_the_architecture(tmp_path, arch):
    model = tiny_model(seed=13, arch=arch, bias=arch == "gpt2")
    save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model_config.json").read_text())["arch"] == arch
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config == model.config
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(12))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_a_config_written_before_architectures_loads_as_gpt2(tmp_path):
    model = tiny_model(seed=1)
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "model_config.json").read_text())
    for key in ("arch", "mlp_hidden", "rope_base", "norm_eps"):
        del config[key]
    (tmp_path / "model_config.json").write_text(json.dumps(config))
    loaded = load_model(tmp_path)
    assert loaded.config.arch == "gpt2" and loaded.config.mlp_hidden == 4 * 32


def test_compiled_model_saves_without_orig_mod_prefix(tmp_path):
    from safetensors import safe_open

    from pipeline.model.checkpoint import save_state_dict

    model = tiny_model()
    wrapped = torch.compile(model)  # not run: only its state_dict names matter
    assert any(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    save_state_dict(wrapped.state_dict(), model.config, tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "_orig_mod" in k]
    assert torch.equal(load_model(tmp_path).transformer.wte.weight, model.transformer.wte.weight)


def test_zero_out_init_starts_every_block_as_the_identity():
    model = tiny_model(arch="llama", init="zero_out")
    projections = [p for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 2 * 2 and all(not p.any() for p in projections)
    idx = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(3))
    x = model.transformer.wte(idx)
    expected = model.lm_head(model.transformer.ln_f(x))
    assert torch.allclose(model(idx)[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="init"):
        tiny_config(init="xavier")


def test_block_fields_override_the_preset_and_mix():
    """`arch` is a preset; each block field can be set on its own (GPT-2 blocks with RoPE)."""
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16,
                       arch="gpt2", position="rope", norm="rmsnorm")  # fmt: skip
    assert (config.norm, config.position, config.mlp, config.bias) == (
        "rmsnorm",
        "rope",
        "gelu",
        True,
    )
    model = GPT(config)
    assert "wpe" not in model.transformer and hasattr(model, "rope_cos")
    assert isinstance(model.transformer.h[0].ln_1, torch.nn.RMSNorm)
    assert config.preset() is None  # no preset has exactly these blocks
    with pytest.raises(ValueError, match="mlp must be one of gelu, swiglu"):
        GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, mlp="relu")


def test_qk_norm_normalizes_queries_and_keys_per_head_and_learns():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16,
                       arch="llama", qk_norm=True)  # fmt: skip
    model = GPT(config)
    attention = model.transformer.h[0].attn
    assert attention.q_norm.weight.shape == (config.head_dim,)
    x = torch.randint(0, 32, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        _, loss = model(x, x)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first - 1.0
    assert attention.q_norm.weight.grad is not None
    plain = GPT(GPTConfig(**{**config.to_dict(), "qk_norm": False}))
    assert plain.num_params() == model.num_params() - 2 * 2 * config.head_dim


def test_model_config_checks_the_shape_through_gpt_config():
    with pytest.raises(ValueError, match="rope positions need an even head size"):
        ModelConfig(arch="gpt2", position="rope", n_embd=12, n_head=4)
    ModelConfig(arch="gpt2", position="rope", n_embd=16, n_head=4)  # even: fine
