"""The recipes of ARCHITECTURE.md, each done exactly as written there: a new quality rule and a
new model block (the source-type and application-task recipes are in tests/test_extensions.py
when they land with the carriers of issue 15)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.clean import quality
from pipeline.clean.stage import run_clean
from pipeline.config import CleanConfig
from pipeline.documents import document_id, iter_documents, make_document, write_documents
from pipeline.model import gpt
from pipeline.model.checkpoint import load_model, save_model

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture
def registries():
    """Undo the test's registrations afterwards (a real extension registers at import)."""
    signals, rules = dict(quality.SIGNALS), list(quality.RULES)
    mlps, widths = dict(gpt.MLP_MODULES), dict(gpt.MLP_WIDTH)
    yield
    quality.SIGNALS.clear()
    quality.SIGNALS.update(signals)
    quality.RULES[:] = rules
    gpt.MLP_MODULES.clear()
    gpt.MLP_MODULES.update(mlps)
    gpt.MLP_WIDTH.clear()
    gpt.MLP_WIDTH.update(widths)


def test_recipe_add_a_quality_rule(tmp_path, registries):
    """Recipe 1: a signal (`@signal`), a row in RULES, and the threshold field in CleanConfig
    (here a subclass, as the test cannot edit the class itself). The clean stage then measures
    it on every document, rejects by it, and names it as the reason."""

    @quality.signal("uppercase_fraction")
    def uppercase_fraction(view: quality.TextView) -> float:
        letters = [c for c in view.text if c.isalpha()]
        return sum(c.isupper() for c in letters) / (len(letters) or 1)

    quality.RULES.append(
        quality.RuleSpec("max_uppercase_fraction", "uppercase_fraction", "<=", "custom")
    )

    class ShoutingCleanConfig(CleanConfig):
        max_uppercase_fraction: float | None = 0.5

    with gzip.open(SAMPLE / "wikitext2_test_articles.jsonl.gz", "rt", encoding="utf-8") as f:
        prose = json.loads(f.readline())["text"].split("\n\n")[0]
    docs = [
        make_document(id=document_id("t", str(i)), text=text, source="t", lang="en", meta={})
        for i, text in enumerate([prose, prose.upper()])
    ]
    write_documents(docs, tmp_path / "in", max_docs=10)
    body = run_clean(tmp_path / "in", tmp_path / "out", ShoutingCleanConfig())
    assert body["counts"]["kept"] == 1
    assert body["counts"]["rejected_by_rule"] == {"max_uppercase_fraction": 1}
    (kept,) = list(iter_documents(tmp_path / "out"))
    assert kept["text"] == prose
    assert any(rule["name"] == "max_uppercase_fraction" for rule in body["rules"])


class ReluSquaredMLP(nn.Module):
    """A new block: relu(x)^2 (Primer, modded-nanogpt), 4x wide."""

    def __init__(self, config: gpt.GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


def test_recipe_add_a_model_block(tmp_path, registries):
    """Recipe 4: one class, `register_mlp`, and its name in ModelConfig.mlp; `mlp: relu2` then
    builds, trains, saves and loads like any other block."""
    gpt.register_mlp("relu2", ReluSquaredMLP, lambda n_embd: 4 * n_embd)
    config = gpt.GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16,
                           arch="llama", mlp="relu2")  # fmt: skip
    torch.manual_seed(0)
    model = gpt.GPT(config)
    assert isinstance(model.transformer.h[0].mlp, ReluSquaredMLP)
    assert config.preset() is None  # no Hugging Face family has it: export refuses it
    x = torch.randint(0, 64, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        _, loss = model(x, x)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] - 1.0
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.mlp == "relu2"
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model.eval()(x)[0])
