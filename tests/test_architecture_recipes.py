"""The recipes of ARCHITECTURE.md, each done exactly as written there: a new quality rule, a
new source type, a new application task and a new model block. The source type and the task are
each one class written to a module file of their own, imported as a user's module would be."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline import config as config_schema
from pipeline.clean import quality
from pipeline.clean.stage import run_clean
from pipeline.config import CleanConfig, ConfigError, load_config
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


def import_module_file(path: Path, text: str):
    """Write a module and import it, as a config's own extension module would be."""
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def config_types():
    """Undo the test's source/task type registrations afterwards."""
    sources, tasks = dict(config_schema.SOURCE_TYPES), dict(config_schema.TASK_TYPES)
    yield
    added = [
        cls
        for table, before in (
            (config_schema.SOURCE_TYPES, sources),
            (config_schema.TASK_TYPES, tasks),
        )
        for tag, cls in list(table.items())
        if tag not in before
    ]
    for cls in added:
        config_schema.unregister(cls)
        sys.modules.pop(cls.__module__, None)


JSON_ARRAY_SOURCE = """
    import json
    from typing import Literal

    from pipeline.config import RecordSource, register_source
    from pipeline.ingest.files import open_binary
    from pipeline.ingest.readers import RawRecord, ReadProblem


    @register_source
    class JsonArraySource(RecordSource):
        \"\"\"Files that each hold one JSON array of records.\"\"\"

        type: Literal["json_array"]
        folder_suffixes = (".json", ".json.gz")

        def read_file(self, file, name):
            with open_binary(file) as handle:
                data = json.loads(handle.read().decode("utf-8"))
            if not isinstance(data, list):
                yield ReadProblem("malformed_json", name, "not a JSON array")
                return
            for number, record in enumerate(data):
                locator = f"{name}#{number}"
                if isinstance(record, dict):
                    yield RawRecord(locator, record)
                else:
                    yield ReadProblem("malformed_json", locator, "not an object", str(record))
"""


def test_recipe_add_a_source_type(tmp_path, config_types):
    """Recipe 2: one RecordSource subclass with `@register_source`, its folder suffixes and
    `read_file`. The config accepts it (and names its keys in errors), the run's source check
    and input fingerprints find its files, and ingest reads it into documents and quarantine."""
    import_module_file(tmp_path / "json_array_source.py", JSON_ARRAY_SOURCE)
    from pipeline.ingest.files import missing_source_files, source_input_fingerprint
    from pipeline.ingest.stage import run_ingest

    data = tmp_path / "data"
    data.mkdir()
    articles = [
        {"id": "a1", "text": "The first article, about rivers.", "title": "Rivers"},
        {"id": "a2", "text": "The second article, about mountains.", "title": "Mountains"},
        "a string, not a record",
    ]
    (data / "articles.json").write_text(json.dumps(articles), encoding="utf-8")
    (data / "notes.txt").write_text("not picked up from a folder: no .json", encoding="utf-8")
    source = {"type": "json_array", "path": "data", "fields": {"id": "id", "title": "title"}}
    (tmp_path / "run.yaml").write_text(json.dumps({"sources": [source]}), encoding="utf-8")
    config = load_config(tmp_path / "run.yaml")

    assert missing_source_files(config) == []
    assert len(source_input_fingerprint(config.sources, config.base_dir)) == 1
    manifest = run_ingest(config.sources, config.base_dir, tmp_path / "out", config.ingest)
    docs = list(iter_documents(tmp_path / "out"))
    assert [(d["title"], d["text"]) for d in docs] == [
        ("Rivers", articles[0]["text"]),
        ("Mountains", articles[1]["text"]),
    ]
    assert docs[0]["source"] == "json_array:data"
    assert manifest["counts"]["quarantined_by_reason"] == {"malformed_json": 1}
    assert manifest["counts"]["by_source"]["json_array:data"]["files"] == 1

    bad = {"sources": [{**source, "pth": "data"}]}
    (tmp_path / "bad.yaml").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"sources\.0\.json_array\.pth: unknown key; did you mean"
    ):
        load_config(tmp_path / "bad.yaml")


LAST_WORD_TASK = """
    from typing import Literal

    from pipeline.config import ApplicationTask, register_task
    from pipeline.finetune.examples import BadRecord


    @register_task
    class LastWordTask(ApplicationTask):
        \"\"\"Finish a sentence: the prompt is a text without its last word, the answer that
        word (LAMBADA as a fine-tuning task).\"\"\"

        type: Literal["last_word"]
        default_name = "last_word"
        default_prompt = "{start}"
        prompt_fields = ("start",)
        text_field: str = "text"

        def example_fields(self, record):
            words = str(record.get(self.text_field) or "").split()
            if len(words) < 2:
                raise BadRecord("too_short", "fewer than two words")
            return {"start": " ".join(words[:-1])}, (words[-1],)

        def score(self, prediction, answers):
            first = prediction.split()[0] if prediction.split() else ""
            return {"exact_match": float(first == answers[0])}
"""


def test_recipe_add_an_application_task(tmp_path, config_types):
    """Recipe 3: one ApplicationTask subclass with `@register_task`, its default name and
    prompt, `example_fields` and `score`. The config accepts it in finetune.tasks and
    evaluate.tasks; fine-tuning reads its examples (bad records quarantined), evaluation
    generates and scores them with its metric, and decontamination checks its held-out ones."""
    import_module_file(tmp_path / "last_word_task.py", LAST_WORD_TASK)
    from tiny_models import save_tiny_model, train_tokenizer

    from pipeline.decontaminate.examples import eval_examples as decontamination_examples
    from pipeline.evaluate.application import greedy_predictions
    from pipeline.evaluate.runners import runner_for
    from pipeline.evaluate.scoring import LogLikelihoodScorer
    from pipeline.evaluate.tasks import EvalContext
    from pipeline.finetune.examples import read_splits
    from pipeline.generate import load_generator
    from pipeline.quarantine import Quarantine
    from pipeline.special_tokens import EOT_TOKEN

    sst2 = SAMPLE / "finetune" / "sst2_dev_sample.jsonl"
    lines = sst2.read_text(encoding="utf-8").splitlines()[:40]
    lines.append(json.dumps({"text": "short"}))
    (tmp_path / "sentences.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = {
        "type": "last_word",
        "path": "sentences.jsonl",
        "eval_fraction": 0.25,
        "max_new_tokens": 4,
    }
    model = save_tiny_model(tmp_path / "model", train_tokenizer(), block_size=128)
    raw = {
        "finetune": {"tasks": [task], "init_from": str(model)},
        "evaluate": {"tasks": [task], "batch_size": 4},
    }
    (tmp_path / "run.yaml").write_text(json.dumps(raw), encoding="utf-8")
    config = load_config(tmp_path / "run.yaml")
    (tuned,) = config.finetune.tasks
    assert type(tuned).__name__ == "LastWordTask"

    for folder in ("fine-tuning", "evaluation", "decontamination"):  # their quarantines
        (tmp_path / folder).mkdir()
    with Quarantine(tmp_path / "fine-tuning") as quarantine:
        train, held_out = read_splits(tuned, config.base_dir, quarantine)
    assert dict(quarantine.counts) == {"too_short": 1}
    assert len(train) + len(held_out) == 40 and held_out
    first = json.loads(lines[0])["text"].split()
    example = next(e for e in train + held_out if e.locator.endswith(":1"))
    assert (example.prompt, example.response) == (" ".join(first[:-1]), " " + first[-1])

    net, tokenizer = load_generator(str(model))
    scorer = LogLikelihoodScorer(
        net,
        lambda text: tokenizer.encode(text).ids,
        eot_id=tokenizer.token_to_id(EOT_TOKEN),
        block_size=128,
        batch_size=4,
    )
    (evaluated,) = config.evaluate.tasks
    with Quarantine(tmp_path / "evaluation") as quarantine:
        ctx = EvalContext(net, tokenizer, scorer, config.evaluate, config.base_dir, quarantine)
        result = runner_for(evaluated)(evaluated, ctx)
        predictions = greedy_predictions([e.prompt for e in held_out], ctx, 4)
    expected = [
        evaluated.score(p, e.answers)["exact_match"]
        for p, e in zip(predictions, held_out, strict=True)
    ]
    assert result.name == "last_word" and result.examples == len(held_out)
    assert result.metrics == {"exact_match": pytest.approx(sum(expected) / len(expected))}
    assert [d["prediction"] for d in result.details] == predictions[: len(result.details)]

    with Quarantine(tmp_path / "decontamination") as quarantine:
        checked = list(decontamination_examples(config, quarantine))
    assert [e.text for e in checked] == [e.prompt + e.response for e in held_out]


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
