"""Evaluation metrics checked by hand, on a bigram model whose probabilities are chosen.

The model maps the current character to fixed next-character probabilities P[current], so every
log-likelihood below can be written out: log p(" a" | "b") = log P[b][" "] + log P[" "][a].
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.config import ConfigError, EvaluateConfig, validate_config
from pipeline.evaluate.scoring import LogLikelihoodScorer
from pipeline.evaluate.tasks import (
    EvalContext,
    hellaswag_context,
    run_lambada,
    run_multiple_choice,
    run_perplexity,
)
from pipeline.quarantine import Quarantine, read_quarantine
from pipeline.wikitext import wikitext_pages

CHARS = ["<eot>", " ", "a", "b"]  # token ids 0..3; characters map to their index
P = torch.tensor(
    [
        [0.1, 0.2, 0.3, 0.4],  # after <eot>
        [0.1, 0.1, 0.6, 0.2],  # after " "
        [0.1, 0.4, 0.2, 0.3],  # after "a"
        [0.1, 0.4, 0.3, 0.2],  # after "b"
    ]
)


def p(prev: str, nxt: str) -> float:
    return float(P[CHARS.index(prev), CHARS.index(nxt)])


class BigramLM(torch.nn.Module):
    """Logits = log P[current token]: the next-token distribution depends on one token."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding.from_pretrained(P.log())

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.table(idx), None


def encode(text: str) -> list[int]:
    return [CHARS.index(c) for c in text]


def scorer(block_size: int = 16, batch_size: int = 3) -> LogLikelihoodScorer:
    return LogLikelihoodScorer(
        BigramLM(), encode, eot_id=0, block_size=block_size, batch_size=batch_size
    )


def context(tmp_path: Path, cfg: EvaluateConfig | None = None, block_size: int = 16):
    s = scorer(block_size)
    return EvalContext(
        s.model, None, s, cfg or EvaluateConfig(), str(tmp_path), Quarantine(tmp_path)
    )


# ---------------------------------------------------------------------- log-likelihood sums


def test_continuation_logprob_is_the_sum_over_its_tokens():
    scores = scorer().continuation_scores([("b", " a"), ("b ", "a"), ("", "ab"), ("ab", " a")])
    by_hand = math.log(p("b", " ") * p(" ", "a"))
    # ("b ", "a"): the context's trailing space moves to the continuation, as in the harness.
    assert scores[0].logprob == pytest.approx(by_hand)
    assert scores[1].logprob == pytest.approx(by_hand)
    assert scores[0].tokens == scores[1].tokens == 2
    # An empty context is the end-of-text token.
    assert scores[2].logprob == pytest.approx(math.log(p("<eot>", "a") * p("a", "b")))
    assert scores[3].logprob == pytest.approx(math.log(p("b", " ") * p(" ", "a")))
    # " a" after "b": " " is the most likely after "b" and "a" after " ": greedy.
    assert scores[0].greedy
    assert not scores[2].greedy  # "b" (0.4) beats "a" (0.3) after <eot>


def test_long_inputs_keep_their_last_block_size_tokens():
    # block_size 2: "ab" + " a" keeps [b, " ", a]; the bigram sum is unchanged.
    [score] = scorer(block_size=2).continuation_scores([("ab", " a")])
    assert score.logprob == pytest.approx(math.log(p("b", " ") * p(" ", "a")))
    with pytest.raises(ValueError, match="exceeds the context length"):
        scorer(block_size=2).continuation_scores([("a", " ab")])


# -------------------------------------------------------------------- multiple choice


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_acc_and_acc_norm_by_hand(tmp_path):
    # Q1: " a" = .4*.6 = .24, " ab" = .24*.3 = .072. acc takes the larger sum ("a"); per byte
    # log(.072)/2 = -1.316 > log(.24)/1 = -1.427, so acc_norm takes "ab" (the label).
    # Q2: " b" = .4*.2 = .08, " a" = .4*.6 = .24: both pick "a" (the label).
    write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"context": "b", "choices": ["a", "ab"], "label": 1},
            {"context": "a", "choices": ["b", "a"], "label": "a"},  # a label may be the text
        ],
    )
    task = EvaluateConfig.model_validate(
        {"tasks": [{"type": "multiple_choice", "path": "mc.jsonl"}]}
    ).tasks[0]
    result = run_multiple_choice(task, context(tmp_path))
    assert result.examples == 2
    assert result.metrics == {"acc": 0.5, "acc_norm": 1.0}
    assert result.stderr["acc"] == pytest.approx(0.5)  # sample std of [0, 1] / sqrt(2)
    first = result.details[0]
    assert first["loglikelihoods"] == pytest.approx([math.log(0.24), math.log(0.072)], abs=1e-5)
    assert (first["pred"], first["pred_norm"]) == (0, 1)


def test_bad_questions_are_quarantined_with_their_reason(tmp_path):
    write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"context": "b", "choices": ["a", "ab"], "label": 1},
            "{not json",
            "[1, 2]",
            {"context": "b", "label": 0},
            {"context": "b", "choices": ["a", "b"], "label": 5},
            {"context": "b", "choices": ["a"], "label": 0},
        ],
    )
    task = EvaluateConfig.model_validate(
        {"tasks": [{"type": "multiple_choice", "path": "mc.jsonl", "limit": 10}]}
    ).tasks[0]
    ctx = context(tmp_path)
    result = run_multiple_choice(task, ctx)
    ctx.quarantine.close()
    assert result.examples == 1
    assert dict(ctx.quarantine.counts) == {
        "invalid_json": 1,
        "not_an_object": 1,
        "missing_field": 1,
        "invalid_question": 2,
    }
    assert len(read_quarantine(tmp_path)) == 5


def test_limit_takes_the_first_questions(tmp_path):
    rows = [{"context": "b", "choices": ["a", "ab"], "label": i % 2} for i in range(5)]
    write_jsonl(tmp_path / "mc.jsonl", rows)
    cfg = EvaluateConfig.model_validate(
        {"tasks": [{"type": "multiple_choice", "path": "mc.jsonl", "limit": 4}], "limit": 3}
    )
    assert run_multiple_choice(cfg.tasks[0], context(tmp_path, cfg)).examples == 3


def test_hellaswag_query_is_built_as_the_harness_builds_it():
    # The original release: activity_label + ": " + ctx_a + " " + ctx_b.capitalize()
    original = {"activity_label": "Clean and jerk", "ctx_a": "A lady walks.", "ctx_b": "the lady"}
    assert hellaswag_context(original) == "Clean and jerk: A lady walks. The lady"
    # llama.cpp's copy has the joined ctx: the trailing lowercase fragment is ctx_b.
    joined = {"activity_label": "Roof shingle removal", "ctx": "A man is sitting on a roof. he"}
    assert hellaswag_context(joined) == "Roof shingle removal: A man is sitting on a roof. He"
    # WikiHow markers: " [title]" becomes ". ", other brackets go, double spaces close up.
    wikihow = {"activity_label": "Home", "ctx": "[header] How to x [title] Do y. [step] Text"}
    assert hellaswag_context(wikihow) == "Home: How to x. Do y. Text"


# ------------------------------------------------------------------------------- LAMBADA


def test_lambada_accuracy_and_perplexity_by_hand(tmp_path):
    # "b a": context "b", target " a": .4 * .6 = .24, greedy (" " then "a" are the argmaxes).
    # "a b": context "a", target " b": .4 * .2 = .08, not greedy ("a" beats "b" after " ").
    write_jsonl(tmp_path / "lambada.jsonl", [{"text": "b a"}, {"text": "a b"}, {"text": "ab"}])
    task = EvaluateConfig.model_validate(
        {"tasks": [{"type": "lambada", "path": "lambada.jsonl"}]}
    ).tasks[0]
    ctx = context(tmp_path)
    result = run_lambada(task, ctx)
    assert result.examples == 2
    assert result.metrics["acc"] == 0.5
    assert result.metrics["ppl"] == pytest.approx(math.exp(-(math.log(0.24) + math.log(0.08)) / 2))
    assert dict(ctx.quarantine.counts) == {"invalid_passage": 1}  # a single word


# ----------------------------------------------------------------------------- perplexity


def test_perplexity_bits_per_byte_and_word_perplexity_by_hand(tmp_path):
    (tmp_path / "doc.txt").write_text("ab ab")
    task = EvaluateConfig.model_validate(
        {"tasks": [{"type": "perplexity", "path": "doc.txt"}]}
    ).tasks[0]
    # <eot> a b " " a b: every token is predicted from the one before it.
    nats = -math.log(p("<eot>", "a") * p("a", "b") * p("b", " ") * p(" ", "a") * p("a", "b"))
    for block_size in (16, 2):  # disjoint windows change nothing for a bigram model
        result = run_perplexity(task, context(tmp_path, block_size=block_size))
        m = result.metrics
        assert m["tokens"] == 5 and m["bytes"] == 5
        assert m["loss"] == pytest.approx(nats / 5)
        assert m["ppl"] == pytest.approx(math.exp(nats / 5))
        assert m["word_ppl"] == pytest.approx(math.exp(nats / 2))  # two words
        assert m["bpb"] == pytest.approx(nats / math.log(2) / 5)


def test_wikitext_pages_split_at_titles_and_detokenize():
    raw = (
        " = Robert Boulter = \r\n \r\n Robert Boulter is an English film , television actor . He "
        "had a guest @-@ starring role ( in 2000 ) . \r\n \r\n = = Career = = \r\n \r\n"
        " = 1 rad / s and a nominal impedance k = \r\n = Second Article = \r\n \r\n Text . \r\n"
    )
    first, second = wikitext_pages(raw)
    assert "film, television actor. He had a guest-starring role (in 2000)." in first
    assert "== Career ==" in first
    assert "1 rad / s and a nominal impedance k" in first  # an equation, not a title
    assert second.startswith(" = Second Article =")


# ------------------------------------------------------------------------------- config


def _config(tmp_path: Path, tasks: list) -> dict:
    return {
        "sources": [{"type": "text", "path": "x.txt"}],
        "base_dir": str(tmp_path),
        "evaluate": {"tasks": tasks},
    }


def test_a_missing_eval_file_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_config(
            _config(tmp_path, [{"type": "heldout"}, {"type": "lambada", "path": "nope.jsonl"}])
        )
    assert "evaluate.tasks.1.path: no such file for task 'lambada'" in str(err.value)
    assert "missing: skip" in str(err.value)
    # Marked skippable, the same config is valid.
    validate_config(
        _config(tmp_path, [{"type": "lambada", "path": "nope.jsonl", "missing": "skip"}])
    )


def test_bad_task_entries_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluate\.tasks\.0\.type: unknown task type 'mmlu'"):
        validate_config(_config(tmp_path, [{"type": "mmlu", "path": "x"}]))
    with pytest.raises(ConfigError, match="repeated: hellaswag"):
        validate_config(
            _config(
                tmp_path,
                [
                    {"type": "hellaswag", "path": "a", "missing": "skip"},
                    {"type": "hellaswag", "path": "b", "missing": "skip"},
                ],
            )
        )
