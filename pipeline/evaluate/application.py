"""Evaluation of the application tasks: QA, summarization, translation, classification.

In: an application task config and the `EvalContext` of the evaluation suite (the model, its
tokenizer and log-likelihood scorer, the `evaluate` config, where relative paths resolve from,
the quarantine). The task's held-out examples (`read_examples(..., split="eval")`) are scored;
out comes a `TaskResult` with the task's metrics, their standard errors where they are means of
per-example scores, and per-example details (prediction, references, scores).

Methods:
- qa, summarization, translation: greedy generation after the prompt (its last
  block_size - max_new_tokens tokens), up to `max_new_tokens` tokens; the prediction is the new
  text up to end-of-text or the first newline, stripped. qa: SQuAD's `exact_match` and `f1`
  (0..1, the best over the gold answers; an unanswerable question's gold is `no_answer`);
  summarization: ROUGE-1/2/L F-measures (0..1); translation: corpus BLEU and chrF (sacrebleu,
  0..100).
- classification: no generation; each label's response is scored as the continuation of the
  prompt and the prediction is the one with the highest summed log-likelihood (lm-eval's
  multiple-choice `acc`); `acc` and `macro_f1`.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.config import (
    ApplicationTask,
    ClassificationTask,
    QATask,
    SummarizationTask,
    TranslationTask,
    task_name,
)
from pipeline.evaluate.tasks import (
    MAX_EXAMPLE_ROWS,
    ChoiceQuestion,
    EvalContext,
    TaskResult,
    TaskSkipped,
    effective_limit,
    mean_stderr,
    score_choices,
)
from pipeline.finetune.examples import Example, read_examples
from pipeline.special_tokens import EOT_TOKEN as EOT


def eval_examples(task: Any, ctx: EvalContext) -> list[Example]:
    """The task's held-out examples (at most the evaluate limit); TaskSkipped when its file is
    absent and marked `missing: skip`, or when it holds no held-out example."""
    try:
        examples = read_examples(task, ctx.base_dir, ctx.quarantine, split="eval")
    except FileNotFoundError as exc:
        if task.missing == "skip":
            raise TaskSkipped(str(exc)) from exc
        raise
    limit = effective_limit(task, ctx.cfg)
    examples = examples[:limit] if limit is not None else examples
    if not examples:
        raise TaskSkipped(f"{task.eval_path or task.path}: no evaluation examples")
    return examples


# -------------------------------------------------------------------------------- generation


def newline_token_ids(tokenizer: Any) -> list[int]:
    """The ids of every token whose text holds a newline: once one is produced, the text up to
    the first newline is known, so generation can stop."""
    size = tokenizer.get_vocab_size()
    texts = tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
    return [i for i, text in enumerate(texts) if "\n" in text]


def greedy_predictions(prompts: list[str], ctx: EvalContext, max_new_tokens: int) -> list[str]:
    """Per prompt, the greedy continuation up to end-of-text or the first newline, stripped.

    Prompts of the same length in tokens are generated as one batch (no padding is needed,
    so a row's result does not depend on the others)."""
    net, tokenizer = ctx.net, ctx.tokenizer
    block = net.config.block_size
    new_tokens = max(1, min(max_new_tokens, block - 1))
    eot_id = tokenizer.token_to_id(EOT)
    stops = newline_token_ids(tokenizer)
    device = next(net.parameters()).device
    encoded = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt).ids or ([eot_id] if eot_id is not None else [0])
        encoded.append(ids[-(block - new_tokens) :])  # the end of the prompt is what matters
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    outputs: list[str] = [""] * len(prompts)
    batch_size = ctx.cfg.batch_size
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for length, members in sorted(by_length.items()):
                for start in range(0, len(members), batch_size):
                    rows = members[start : start + batch_size]
                    idx = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=device)
                    out = net.generate(
                        idx, new_tokens, temperature=0.0, eos_id=eot_id, stop_ids=stops
                    )
                    for i, generated in zip(rows, out[:, length:].tolist(), strict=True):
                        if eot_id is not None and eot_id in generated:
                            generated = generated[: generated.index(eot_id)]
                        text = tokenizer.decode(generated)
                        outputs[i] = text.split("\n", 1)[0].strip()
    finally:
        net.train(was_training)
    return outputs


def _generation_method(task: Any) -> str:
    return (
        f"greedy generation after the prompt, up to {task.max_new_tokens} tokens, cut at "
        "end-of-text or the first newline"
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _details(examples: list[Example], predictions: list[str], scores: list[dict]) -> list[dict]:
    return [
        {
            "locator": e.locator,
            "prediction": p,
            "references": list(e.answers),
            "score": {k: round(v, 6) for k, v in s.items()},
        }
        for e, p, s in zip(examples, predictions, scores, strict=True)
    ][:MAX_EXAMPLE_ROWS]


# ------------------------------------------------------------------------------------ runners


def run_qa(task: Any, ctx: EvalContext) -> TaskResult:
    from pipeline.evaluate.task_metrics import exact_match, token_f1

    examples = eval_examples(task, ctx)
    predictions = greedy_predictions([e.prompt for e in examples], ctx, task.max_new_tokens)
    em = [exact_match(p, e.answers) for p, e in zip(predictions, examples, strict=True)]
    f1 = [token_f1(p, e.answers) for p, e in zip(predictions, examples, strict=True)]
    scores = [{"exact_match": a, "f1": b} for a, b in zip(em, f1, strict=True)]
    # SQuAD 2.0's breakdown: answerable questions (HasAns) and unanswerable ones (NoAns)
    has = [f for f, e in zip(f1, examples, strict=True) if e.answers != (task.no_answer,)]
    no = [m for m, e in zip(em, examples, strict=True) if e.answers == (task.no_answer,)]
    return TaskResult(
        task_name(task),
        task.type,
        f"{_generation_method(task)}; exact_match and f1 as SQuAD's official script (normalized"
        f" text, best over the gold answers; unanswerable questions' gold: {task.no_answer!r});"
        " has_answer_f1 over answerable questions, no_answer_acc over unanswerable ones",
        metrics={
            "exact_match": _mean(em),
            "f1": _mean(f1),
            "has_answer_f1": _mean(has),
            "no_answer_acc": _mean(no),
        },
        stderr={
            "exact_match": mean_stderr(em),
            "f1": mean_stderr(f1),
            "has_answer_f1": mean_stderr(has),
            "no_answer_acc": mean_stderr(no),
        },
        examples=len(examples),
        details=_details(examples, predictions, scores),
    )


def run_summarization(task: Any, ctx: EvalContext) -> TaskResult:
    from pipeline.evaluate.task_metrics import ROUGE_KEYS, rouge

    examples = eval_examples(task, ctx)
    predictions = greedy_predictions([e.prompt for e in examples], ctx, task.max_new_tokens)
    per_example = rouge(predictions, [e.answers[0] for e in examples])
    scores = [{k: per_example[k][i] for k in ROUGE_KEYS} for i in range(len(examples))]
    return TaskResult(
        task_name(task),
        task.type,
        f"{_generation_method(task)}; ROUGE-1/2/L F-measure against the reference summary "
        "(rouge-score, Porter stemmer), mean over examples",
        metrics={k: _mean(per_example[k]) for k in ROUGE_KEYS},
        stderr={k: mean_stderr(per_example[k]) for k in ROUGE_KEYS},
        examples=len(examples),
        details=_details(examples, predictions, scores),
    )


def run_translation(task: Any, ctx: EvalContext) -> TaskResult:
    from pipeline.evaluate.task_metrics import bleu_chrf

    examples = eval_examples(task, ctx)
    predictions = greedy_predictions([e.prompt for e in examples], ctx, task.max_new_tokens)
    references = [e.answers[0] for e in examples]
    corpus = bleu_chrf(predictions, references)
    # Per sentence, for the details only: the metrics are corpus-level (no standard error).
    scores = [
        bleu_chrf([p], [r])
        for p, r in zip(predictions[:MAX_EXAMPLE_ROWS], references, strict=False)
    ]
    return TaskResult(
        task_name(task),
        task.type,
        f"{_generation_method(task)}; corpus BLEU and chrF against one reference each "
        f"(sacrebleu, 13a tokenizer, 0..100), {task.source_lang} -> {task.target_lang}",
        metrics=corpus,
        examples=len(examples),
        details=_details(examples[:MAX_EXAMPLE_ROWS], predictions[:MAX_EXAMPLE_ROWS], scores),
    )


def run_classification(task: Any, ctx: EvalContext) -> TaskResult:
    from pipeline.evaluate.task_metrics import accuracy, macro_f1

    name = task_name(task)
    examples = eval_examples(task, ctx)
    questions = [
        ChoiceQuestion(e.locator, e.prompt, list(e.choices), e.label)  # type: ignore[arg-type]
        for e in examples
    ]
    # The responses already carry their leading space: no delimiter between prompt and choice.
    results, too_long = score_choices(questions, ctx.scorer, delimiter="")
    for locator in too_long:
        ctx.quarantine.add(
            "choice_does_not_fit_context",
            source=name,
            locator=locator,
            detail=f"a label's response is empty or longer than {ctx.scorer.block_size} tokens",
        )
    words = list(task.labels.values())
    predictions = [r["pred"] for r in results]
    labels = [r["label"] for r in results]
    hits = [float(p == y) for p, y in zip(predictions, labels, strict=True)]
    metrics = {"acc": float("nan"), "macro_f1": float("nan")}
    if results:
        metrics = {
            "acc": accuracy(predictions, labels),
            "macro_f1": macro_f1(predictions, labels, len(words)),
        }
    details = [
        {
            "locator": r["locator"],
            "prediction": words[r["pred"]],
            "references": [words[r["label"]]],
            "score": {"acc": hit},
            "loglikelihoods": r["loglikelihoods"],
        }
        for r, hit in zip(results, hits, strict=True)
    ]
    return TaskResult(
        name,
        task.type,
        "each label's response scored as the continuation of the prompt (0-shot, as lm-eval's "
        "multiple choice); prediction = argmax summed log-likelihood; acc, and macro_f1 over "
        f"the {len(words)} labels ({', '.join(words)})",
        metrics=metrics,
        stderr={"acc": mean_stderr(hits)},
        examples=len(results),
        details=details[:MAX_EXAMPLE_ROWS],
    )


def run_own_score(task: Any, ctx: EvalContext) -> TaskResult:
    """A task type that scores its predictions itself (`score`): greedy generation, then the
    mean (and standard error) of each of its per-example metrics."""
    examples = eval_examples(task, ctx)
    predictions = greedy_predictions([e.prompt for e in examples], ctx, task.max_new_tokens)
    scores = [task.score(p, e.answers) for p, e in zip(predictions, examples, strict=True)]
    keys = sorted({k for score in scores for k in score})
    per_metric = {k: [float(score[k]) for score in scores if k in score] for k in keys}
    return TaskResult(
        task_name(task),
        task.type,
        f"{_generation_method(task)}; {type(task).__name__}.score per example, mean over examples",
        metrics={k: _mean(v) for k, v in per_metric.items()},
        stderr={k: mean_stderr(v) for k, v in per_metric.items()},
        examples=len(examples),
        details=_details(examples, predictions, scores),
    )


# The application tasks' runners, by config class. A task type of its own (an ApplicationTask
# subclass with `score`) is run by `run_own_score`.
APPLICATION_RUNNERS: dict[type, Any] = {
    ApplicationTask: run_own_score,
    QATask: run_qa,
    SummarizationTask: run_summarization,
    TranslationTask: run_translation,
    ClassificationTask: run_classification,
}
