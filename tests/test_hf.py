"""Hugging Face interop: exported folders load in `transformers` and compute what ours do;
HF GPT-2 folders import as our GPT; our multiple-choice scores equal transformers' own."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import SAMPLE, sample_texts, save_tiny_model, train_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from flows.cli import main as cli_main
from pipeline.config import EvaluateConfig
from pipeline.evaluate import run_evaluation
from pipeline.generate import generate_texts, load_generator
from pipeline.model.checkpoint import load_model
from pipeline.model.hf import hf_tokenizer, import_hf

TEXT = "The history of the town begins in 1998, when the band played at the old theatre."


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def _hf(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize(
    ("arch", "bias", "tie", "hf_class"),
    [
        ("gpt2", True, True, "GPT2LMHeadModel"),
        ("gpt2", False, False, "GPT2LMHeadModel"),
        ("llama", False, True, "LlamaForCausalLM"),
        ("llama", True, False, "LlamaForCausalLM"),
    ],
)
def test_export_loads_in_transformers_with_the_same_logits(
    tmp_path, tokenizer, arch, bias, tie, hf_class
):
    model_dir = save_tiny_model(
        tmp_path / "ours", tokenizer, arch=arch, bias=bias, tie_embeddings=tie
    )
    out = tmp_path / "hf"
    assert cli_main(["export", str(model_dir), str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["architectures"] == [hf_class]

    hf_model, hf_tok = _hf(out), AutoTokenizer.from_pretrained(out)
    assert type(hf_model).__name__ == hf_class
    ids = tokenizer.encode(TEXT).ids
    assert hf_tok(TEXT)["input_ids"] == ids
    assert hf_tok.decode(ids) == TEXT

    net = load_model(model_dir).eval()
    x = torch.tensor([ids, list(reversed(ids))])
    with torch.no_grad():
        ours, theirs = net(x)[0], hf_model(x).logits
    assert (ours - theirs).abs().max().item() < 1e-4

    generated = hf_model.generate(x[:1, :6], max_new_tokens=8, do_sample=False)
    assert generated.shape == (1, 14)
    assert generated.tolist() == net.generate(x[:1, :6], 8, temperature=0).tolist()


def test_import_a_gpt2_saved_by_transformers(tmp_path, tokenizer):
    torch.manual_seed(0)
    # OpenAI GPT-2's configuration in miniature: tanh GELU (gelu_new), biases, tied head.
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(), n_positions=64, n_embd=48, n_layer=2, n_head=3
    )
    assert config.activation_function == "gelu_new"
    hf_model = GPT2LMHeadModel(config).eval()
    hf_dir = tmp_path / "gpt2-like"
    hf_model.save_pretrained(hf_dir)
    hf_tokenizer(tokenizer).save_pretrained(hf_dir)

    net, imported_tok = import_hf(hf_dir)
    assert net.config.activation == "gelu_tanh" and net.config.block_size == 64
    ids = imported_tok.encode(TEXT).ids
    assert ids == tokenizer.encode(TEXT).ids
    x = torch.tensor([ids[:64]])
    with torch.no_grad():
        assert (net(x)[0] - hf_model(x).logits).abs().max().item() < 1e-4

    # As a starting point: the folder loads like any checkpoint, generates, and trains.
    folder = tmp_path / "ours"
    assert cli_main(["import", str(hf_dir), str(folder)]) == 0
    assert json.loads((folder / "model_config.json").read_text())["activation"] == "gelu_tanh"
    loaded, tok = load_generator(str(folder))
    [text] = generate_texts(loaded, tok, ["Once upon a time"], max_new_tokens=5, seed=0)
    assert text.startswith("Once upon a time")
    loaded.train()
    batch = torch.tensor([tok.encode(t).ids[:33] for t in sample_texts()[:4]])
    optimizer = torch.optim.AdamW(loaded.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        _, loss = loaded(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_import_refuses_what_it_cannot_represent(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_hf(tmp_path)


def _transformers_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context) with transformers alone."""
    context_ids = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return sum(log_probs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))


def test_multiple_choice_scores_equal_what_transformers_computes(tmp_path, tokenizer):
    model_dir = save_tiny_model(tmp_path / "ours", tokenizer, seed=3, block_size=512)
    cfg = EvaluateConfig.model_validate(
        {
            "tasks": [
                {
                    "type": "multiple_choice",
                    "name": "hs",
                    "path": str(SAMPLE / "hellaswag_val_sample.jsonl"),
                    "limit": 12,
                }
            ]
        }
    )
    result = run_evaluation(model_dir, cfg, str(tmp_path), tmp_path / "eval", log=lambda _: None)
    ours = [json.loads(line) for line in (tmp_path / "eval" / "hs_examples.jsonl").open()]

    hf_dir = tmp_path / "hf"
    assert cli_main(["export", str(model_dir), str(hf_dir)]) == 0
    hf_model, hf_tok = _hf(hf_dir), AutoTokenizer.from_pretrained(hf_dir)
    questions = [json.loads(line) for line in (SAMPLE / "hellaswag_val_sample.jsonl").open()][:12]
    acc, acc_norm = [], []
    for question, mine in zip(questions, ours, strict=True):
        lls = [
            _transformers_loglikelihood(hf_model, hf_tok, question["context"], " " + choice)
            for choice in question["choices"]
        ]
        assert mine["loglikelihoods"] == pytest.approx(lls, abs=2e-4)
        normed = [ll / len(c.encode()) for ll, c in zip(lls, question["choices"], strict=True)]
        acc.append(float(max(range(4), key=lambda i: lls[i]) == question["label"]))
        acc_norm.append(float(max(range(4), key=lambda i: normed[i]) == question["label"]))
    assert result["metrics"]["hs_acc"] == pytest.approx(sum(acc) / len(acc))
    assert result["metrics"]["hs_acc_norm"] == pytest.approx(sum(acc_norm) / len(acc_norm))
    assert not math.isnan(result["metrics"]["hs_acc"])


def test_export_refuses_blocks_no_hugging_face_architecture_has(tmp_path, tokenizer):
    """A model whose blocks match no preset (QK-norm, or GPT-2 blocks with RoPE) is refused with
    the blocks named, before anything is written."""
    model_dir = save_tiny_model(tmp_path / "ours", tokenizer, arch="llama", qk_norm=True)
    out = tmp_path / "hf"
    with pytest.raises(ValueError, match="no Hugging Face architecture has these blocks"):
        cli_main(["export", str(model_dir), str(out)])
    assert not out.exists()


def test_exported_files_follow_the_umask(tmp_path, tokenizer):
    """safetensors writes through a private temporary file: the export must not stay 0600."""
    import os
    import stat

    model_dir = save_tiny_model(tmp_path / "ours", tokenizer)
    old = os.umask(0o022)
    try:
        assert cli_main(["export", str(model_dir), str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()}
    assert modes["model.safetensors"] == 0o644, modes
    assert set(modes.values()) == {0o644}
