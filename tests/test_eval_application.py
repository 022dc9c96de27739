"""The application-task runners (qa, summarization, translation, classification) on a small
real GPT: predictions checked against an independent greedy decode, metrics recomputed from the
per-example details, classification checked against the scorer's log-likelihoods, skips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_model, train_tokenizer

from pipeline.config import TASK_TYPES, ClassificationTask, EvaluateConfig, QATask, TranslationTask
from pipeline.evaluate import run_evaluation
from pipeline.evaluate.application import (
    greedy_predictions,
    newline_token_ids,
    run_classification,
    run_qa,
    run_translation,
)
from pipeline.evaluate.runners import runner_for
from pipeline.evaluate.scoring import LogLikelihoodScorer
from pipeline.evaluate.task_metrics import bleu_chrf, exact_match, token_f1
from pipeline.evaluate.tasks import EvalContext, TaskSkipped, eval_input_fingerprints
from pipeline.generate import load_generator
from pipeline.quarantine import Quarantine
from pipeline.special_tokens import EOT_TOKEN as EOT

FINETUNE = Path(__file__).resolve().parents[1] / "data" / "sample" / "finetune"
SST2_LABELS = {"0": "negative", "1": "positive"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"), train_tokenizer(), block_size=128)


@pytest.fixture
def ctx(model_dir, tmp_path):
    net, tokenizer = load_generator(str(model_dir))
    scorer = LogLikelihoodScorer(
        net,
        lambda text: tokenizer.encode(text).ids,
        eot_id=tokenizer.token_to_id(EOT),
        block_size=net.config.block_size,
        batch_size=4,
    )
    cfg = EvaluateConfig(batch_size=4)
    with Quarantine(tmp_path) as quarantine:
        yield EvalContext(net, tokenizer, scorer, cfg, str(FINETUNE), quarantine)


def reference_greedy(ctx: EvalContext, prompt: str, max_new_tokens: int) -> str:
    """Token by token without a cache or stop tokens, then cut as the runners cut."""
    net, tokenizer = ctx.net, ctx.tokenizer
    keep = net.config.block_size - max_new_tokens
    eot = tokenizer.token_to_id(EOT)
    ids = (tokenizer.encode(prompt).ids or [eot])[-keep:]  # an empty prompt: a new document
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = net(torch.tensor([ids + new]))
            token = int(logits[0, -1].argmax())
            if token == eot:
                break
            new.append(token)
    return tokenizer.decode(new).split("\n", 1)[0].strip()


def test_runners_are_registered():
    assert {
        runner_for(TASK_TYPES[t].model_construct()).__name__
        for t in ("qa", "summarization", "translation", "classification")
    } == {
        "run_qa",
        "run_summarization",
        "run_translation",
        "run_classification",
    }


def test_greedy_predictions_match_an_independent_decode(ctx):
    prompts = [
        "The history of",
        "It was a dark",  # same length in tokens as another prompt: batched together
        "He was born in",
        "x" * 2000,  # longer than the context: its end is kept
        "",
    ]
    predictions = greedy_predictions(prompts, ctx, max_new_tokens=6)
    assert predictions == [reference_greedy(ctx, p, 6) for p in prompts]
    assert all("\n" not in p for p in predictions)
    stops = newline_token_ids(ctx.tokenizer)
    assert ctx.tokenizer.token_to_id("Ċ") in stops  # byte-level BPE's "\n"
    assert all("\n" in ctx.tokenizer.decode([i]) for i in stops)


def test_qa_metrics_are_the_means_of_the_details(ctx):
    task = QATask(type="qa", path="squad_v2_sample.json", limit=6, max_new_tokens=5)
    result = run_qa(task, ctx)
    assert result.examples == len(result.details) == 6
    assert set(result.metrics) == {"exact_match", "f1", "has_answer_f1", "no_answer_acc"}
    em = [exact_match(d["prediction"], d["references"]) for d in result.details]
    f1 = [token_f1(d["prediction"], d["references"]) for d in result.details]
    assert result.metrics["exact_match"] == pytest.approx(sum(em) / 6)
    assert result.metrics["f1"] == pytest.approx(sum(f1) / 6)
    answerable = [d["references"] != ["no answer"] for d in result.details]
    has = [f for f, a in zip(f1, answerable, strict=True) if a]
    no = [m for m, a in zip(em, answerable, strict=True) if not a]
    assert 0 < len(has) < 6  # the sample's first held-out questions mix both kinds
    assert result.metrics["has_answer_f1"] == pytest.approx(sum(has) / len(has))
    assert result.metrics["no_answer_acc"] == pytest.approx(sum(no) / len(no))
    assert [d["score"]["f1"] for d in result.details] == pytest.approx(f1, abs=1e-6)
    # The held-out examples of the file, in file order, each answered by greedy decoding.
    from pipeline.finetune.examples import read_examples

    held_out = read_examples(task, str(FINETUNE), ctx.quarantine, split="eval")
    assert [d["locator"] for d in result.details] == [e.locator for e in held_out]
    assert result.details[0]["prediction"] == reference_greedy(ctx, held_out[0].prompt, 5)


def test_translation_corpus_scores(ctx):
    task = TranslationTask(
        type="translation",
        path="flores_en_de_sample.jsonl",
        source_lang="en",
        target_lang="de",
        limit=4,
        max_new_tokens=4,
    )
    result = run_translation(task, ctx)
    predictions = [d["prediction"] for d in result.details]
    references = [d["references"][0] for d in result.details]
    assert result.metrics == pytest.approx(bleu_chrf(predictions, references))
    assert 0 <= result.metrics["chrf"] <= 100 and result.examples == 4


def test_classification_is_the_argmax_of_the_scorer(ctx, tmp_path):
    records = [
        {"text": "a wonderful , moving film", "label": 1},
        {"text": "dull and far too long", "label": 0},
        {"text": "the best thing this year", "label": 1},
        {"text": "an utter waste of time", "label": 0},
        {"text": "it is neither good nor bad", "label": 1},
    ]
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    task = ClassificationTask(
        type="classification",
        name="sent",
        path=str(FINETUNE / "sst2_sample.jsonl"),
        eval_path=str(tmp_path / "dev.jsonl"),
        labels=SST2_LABELS,
    )
    result = run_classification(task, ctx)
    assert result.examples == 5
    predictions = []
    for record, row in zip(records, result.details, strict=True):
        scores = ctx.scorer.continuation_scores(
            [
                (record["text"] + "\nAnswer:", " negative"),
                (record["text"] + "\nAnswer:", " positive"),
            ]
        )
        lls = [s.logprob for s in scores]
        assert row["loglikelihoods"] == pytest.approx(lls, abs=1e-5)
        predicted = int(lls[1] > lls[0])
        predictions.append(predicted)
        assert row["prediction"] == SST2_LABELS[str(predicted)]
        assert row["references"] == [SST2_LABELS[str(record["label"])]]
    labels = [r["label"] for r in records]
    hits = [float(p == y) for p, y in zip(predictions, labels, strict=True)]
    assert result.metrics["acc"] == pytest.approx(sum(hits) / 5)
    f1s = []
    for c in (0, 1):
        tp = sum(p == y == c for p, y in zip(predictions, labels, strict=True))
        fp = sum(p == c != y for p, y in zip(predictions, labels, strict=True))
        fn = sum(y == c != p for p, y in zip(predictions, labels, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    assert result.metrics["macro_f1"] == pytest.approx(sum(f1s) / 2)
    assert math.isnan(result.stderr["acc"]) is False


def test_missing_files_skip_or_raise(ctx):
    task = QATask(type="qa", path="absent.json", missing="skip")
    with pytest.raises(TaskSkipped, match="absent.json"):
        run_qa(task, ctx)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        run_qa(task.model_copy(update={"missing": "error"}), ctx)


def test_suite_table_and_fingerprints(model_dir, tmp_path):
    (tmp_path / "dev.jsonl").write_text(json.dumps({"text": "fine", "label": 1}) + "\n")
    cfg = EvaluateConfig.model_validate(
        {
            "tasks": [
                {
                    "type": "summarization",
                    "name": "xsum",
                    "path": str(FINETUNE / "xsum_sample.jsonl"),
                    "article_field": "document",
                    "max_new_tokens": 4,
                },
                {
                    "type": "classification",
                    "name": "sst2",
                    "path": str(FINETUNE / "sst2_sample.jsonl"),
                    "eval_path": "dev.jsonl",
                    "labels": SST2_LABELS,
                },
                {
                    "type": "translation",
                    "path": "absent.tsv",
                    "missing": "skip",
                    "source_lang": "en",
                    "target_lang": "de",
                },
            ],
            "limit": 3,
        }
    )
    result = run_evaluation(model_dir, cfg, str(tmp_path), tmp_path / "out", log=lambda _: None)
    metrics = result["metrics"]
    assert {"xsum_rouge1", "xsum_rouge2", "xsum_rougeL", "sst2_acc", "sst2_macro_f1"} <= set(
        metrics
    )
    assert all(0 <= metrics[f"xsum_{k}"] <= 1 for k in ("rouge1", "rouge2", "rougeL"))
    assert [s["task"] for s in result["skipped"]] == ["translation"]
    rows = (tmp_path / "out" / "xsum_examples.jsonl").read_text().splitlines()
    assert len(rows) == 3 and {"locator", "prediction", "references", "score"} <= set(
        json.loads(rows[0])
    )

    # The evaluate stage's fingerprint follows every file the tasks read, eval_path included.
    before = eval_input_fingerprints(cfg, str(tmp_path))
    (tmp_path / "dev.jsonl").write_text(json.dumps({"text": "bad", "label": 0}) + "\n")
    after = eval_input_fingerprints(cfg, str(tmp_path))
    assert before[0] == after[0] and before[1] != after[1] and before[2] == after[2]
    (tmp_path / "absent.tsv").write_text("en\tde\nyes\tja\n")
    assert eval_input_fingerprints(cfg, str(tmp_path))[2] != after[2]
