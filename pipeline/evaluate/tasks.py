"""The evaluation tasks: each reads its local file, scores the model, returns its metrics.

In: an `EvalContext` (the model and its scorer, the `evaluate` config, where relative paths
resolve from, a quarantine for bad records, and for the held-out task the val token shards)
and one task config from `pipeline.config`. Out: a `TaskResult` with the task's metrics
(unprefixed: `acc`, `acc_norm`, `ppl`, `bpb`, ...), their standard errors where they are means
of per-example scores, the number of examples scored, a one-line description of the method, and
per-example details (for multiple-choice and LAMBADA) or generations. The application tasks
(qa, summarization, translation, classification) run in `pipeline.evaluate.application`;
`pipeline.evaluate.runners` maps every task config class to its runner. Finding and reading a task's
files is in `pipeline.eval_files` (shared with decontaminate and tracking).

Methods, as lm-evaluation-harness defines them (0-shot):
- multiple choice (HellaSwag, any jsonl): each choice is scored as the continuation
  `delimiter + choice` of the context; `acc` picks the highest summed log-likelihood, `acc_norm`
  the highest log-likelihood divided by the choice's length in UTF-8 bytes (the harness divides
  by characters: the same for ASCII text such as HellaSwag's).
- LAMBADA (`lambada_openai`): context = the passage up to its last space, continuation =
  " " + last word; `acc` = the word is the greedy continuation, `ppl` = exp(-mean log p(word)).
- perplexity (text files, WikiText-2): `loglikelihood_rolling` over whole documents; `ppl` is
  per token (depends on the tokenizer), `word_ppl` per whitespace-separated word and `bpb` bits
  per UTF-8 byte (both tokenizer-independent, as the harness's `word_perplexity` and
  `bits_per_byte`).

A record that cannot be used (not JSON, a field missing, a label out of range, a continuation
longer than the model's context) is quarantined with its reason and counted, never scored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import (
    ApplicationTask,
    EvaluateConfig,
    GenerationsTask,
    HeldoutTask,
    HellaSwagTask,
    LambadaTask,
    MultipleChoiceTask,
    PerplexityTask,
    WikiText2Task,
    task_name,
)
from pipeline.eval_files import TaskSkipped, hellaswag_preprocess, read_text, task_files
from pipeline.evaluate.language_model import bits_per_byte, heldout_loss
from pipeline.evaluate.scoring import LogLikelihoodScorer
from pipeline.ingest.files import jsonl_records
from pipeline.quarantine import Quarantine
from pipeline.wikitext import wikitext_pages

MAX_EXAMPLE_ROWS = 1000  # per-example details kept per task (the whole task is still scored)


@dataclass
class EvalContext:
    net: Any
    tokenizer: Any
    scorer: LogLikelihoodScorer
    cfg: EvaluateConfig
    base_dir: str
    quarantine: Quarantine
    shards_dir: Path | None = None
    bytes_per_token: float | None = None


@dataclass
class TaskResult:
    name: str
    type: str
    method: str
    metrics: dict[str, float]
    examples: int
    stderr: dict[str, float] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)
    generations: list[dict[str, str]] = field(default_factory=list)


def mean_stderr(values: list[float]) -> float:
    """Standard error of a mean, with the sample standard deviation (as the harness)."""
    if len(values) < 2:
        return float("nan")
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def effective_limit(task: Any, cfg: EvaluateConfig) -> int | None:
    limits = [n for n in (getattr(task, "limit", None), cfg.limit) if n is not None]
    return min(limits) if limits else None


# ---------------------------------------------------------------------------- multiple choice


@dataclass(frozen=True)
class ChoiceQuestion:
    locator: str
    context: str
    choices: list[str]
    label: int


# The trailing fragment of an ActivityNet context (the harness's `ctx_b`): lowercase words
# after the last sentence end, e.g. "A man is sitting on a roof. he".
_TRAILING_FRAGMENT = re.compile(r"^(.*[.!?]\s+|)([a-z][^.!?]*)$", re.S)


def hellaswag_context(record: dict[str, Any]) -> str:
    """`activity_label: ctx_a Ctx_b`, as the harness builds HellaSwag's query.

    Files with `ctx_a`/`ctx_b` (the original release) get exactly the harness's query. Files
    with only the joined `ctx` (as llama.cpp ships HellaSwag) get their trailing lowercase
    fragment capitalized instead, which is what `ctx_b.capitalize()` does for ActivityNet rows.
    """
    if "ctx_a" in record:
        ctx = str(record["ctx_a"]) + " " + str(record.get("ctx_b") or "").capitalize()
    else:
        ctx = str(record["ctx"])
        trailing = _TRAILING_FRAGMENT.match(ctx)
        if trailing:
            ctx = trailing.group(1) + trailing.group(2).capitalize()
    label = str(record.get("activity_label") or "")
    return hellaswag_preprocess(f"{label}: {ctx}" if label else ctx)


def _label_index(value: Any, choices: list[str]) -> int:
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        if value not in choices:
            raise ValueError(f"label {value!r} is not one of the choices")
        return choices.index(value)
    index = int(value)
    if not 0 <= index < len(choices):
        raise ValueError(f"label {index} is out of range for {len(choices)} choices")
    return index


def hellaswag_question(task: Any, record: dict[str, Any]) -> tuple[str, list[str], int]:
    choices = [hellaswag_preprocess(str(e)) for e in record["endings"]]
    return hellaswag_context(record), choices, _label_index(record["label"], choices)


def field_question(task: Any, record: dict[str, Any]) -> tuple[str, list[str], int]:
    """A multiple_choice record: context, choices and label in the fields the task names."""
    raw = record[task.choices_field]
    if not isinstance(raw, list):
        raise ValueError(f"{task.choices_field} is not a list")
    choices = [str(c) for c in raw]
    context = str(record[task.context_field])
    return context, choices, _label_index(record[task.label_field], choices)


QuestionReader = Callable[[Any, dict[str, Any]], tuple[str, list[str], int]]


def choice_questions(
    task: Any, ctx: EvalContext, limit: int | None, question: QuestionReader = field_question
) -> list[ChoiceQuestion]:
    name = task_name(task)
    questions = []
    files = task_files(task, ctx.base_dir)
    for locator, record in jsonl_records(files, name, ctx.quarantine):
        if limit is not None and len(questions) >= limit:
            break
        try:
            context, choices, label = question(task, record)
            if len(choices) < 2:
                raise ValueError("fewer than two choices")
        except KeyError as exc:
            ctx.quarantine.add(
                "missing_field", source=name, locator=locator, detail=str(exc), record=record
            )
            continue
        except (TypeError, ValueError) as exc:
            ctx.quarantine.add(
                "invalid_question", source=name, locator=locator, detail=str(exc), record=record
            )
            continue
        questions.append(ChoiceQuestion(locator, context, choices, label))
    return questions


def score_choices(
    questions: list[ChoiceQuestion], scorer: LogLikelihoodScorer, delimiter: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per question: the log-likelihood of each choice and the predictions; plus the locators
    of questions quarantined because a choice does not fit the model's context."""
    pairs, owners = [], []
    for q, question in enumerate(questions):
        for choice in question.choices:
            pairs.append((question.context, delimiter + choice))
            owners.append(q)
    # One pass over every (context, choice); a question with an unscorable choice is dropped.
    fits = []
    for pair in pairs:
        _, continuation_ids = scorer.encode_pair(*pair)
        fits.append(0 < len(continuation_ids) <= scorer.block_size)
    bad = {owners[i] for i, ok in enumerate(fits) if not ok}
    kept_pairs = [p for i, p in enumerate(pairs) if owners[i] not in bad]
    scores = iter(scorer.continuation_scores(kept_pairs))
    results = []
    for q, question in enumerate(questions):
        if q in bad:
            continue
        lls = [next(scores).logprob for _ in question.choices]
        lengths = [len(c.encode("utf-8")) or 1 for c in question.choices]
        normed = [ll / n for ll, n in zip(lls, lengths, strict=True)]
        results.append(
            {
                "locator": question.locator,
                "label": question.label,
                "pred": int(np.argmax(lls)),
                "pred_norm": int(np.argmax(normed)),
                "loglikelihoods": [round(x, 6) for x in lls],
            }
        )
    return results, [questions[q].locator for q in sorted(bad)]


def run_multiple_choice(task: Any, ctx: EvalContext) -> TaskResult:
    return _run_choices(task, ctx, field_question, task.delimiter, "the context")


def run_hellaswag(task: Any, ctx: EvalContext) -> TaskResult:
    return _run_choices(task, ctx, hellaswag_question, " ", "'activity_label: ctx'")


def _run_choices(
    task: Any, ctx: EvalContext, question: QuestionReader, delimiter: str, what: str
) -> TaskResult:
    name = task_name(task)
    questions = choice_questions(task, ctx, effective_limit(task, ctx.cfg), question)
    results, too_long = score_choices(questions, ctx.scorer, delimiter)
    for locator in too_long:
        ctx.quarantine.add(
            "choice_does_not_fit_context",
            source=name,
            locator=locator,
            detail=f"a choice is empty or longer than {ctx.scorer.block_size} tokens",
        )
    acc = [float(r["pred"] == r["label"]) for r in results]
    acc_norm = [float(r["pred_norm"] == r["label"]) for r in results]
    method = (
        f"lm-eval-harness multiple_choice, 0-shot: acc = argmax sum log p({delimiter!r} + choice"
        f" | {what}); acc_norm = argmax of it / UTF-8 bytes of the choice"
    )
    return TaskResult(
        name,
        task.type,
        method,
        metrics={"acc": _mean(acc), "acc_norm": _mean(acc_norm)},
        stderr={"acc": mean_stderr(acc), "acc_norm": mean_stderr(acc_norm)},
        examples=len(results),
        details=results[:MAX_EXAMPLE_ROWS],
    )


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


# ----------------------------------------------------------------------------------- LAMBADA


def run_lambada(task: Any, ctx: EvalContext) -> TaskResult:
    name = task_name(task)
    limit = effective_limit(task, ctx.cfg)
    pairs, locators = [], []
    files = task_files(task, ctx.base_dir)
    for locator, record in jsonl_records(files, name, ctx.quarantine):
        if limit is not None and len(pairs) >= limit:
            break
        text = record.get("text")
        if not isinstance(text, str) or " " not in text.strip():
            ctx.quarantine.add(
                "invalid_passage",
                source=name,
                locator=locator,
                detail="no text, or a single word",
                record=record,
            )
            continue
        words = text.split(" ")
        context, target = " ".join(words[:-1]), " " + words[-1]
        _, target_ids = ctx.scorer.encode_pair(context, target)
        if not 0 < len(target_ids) <= ctx.scorer.block_size:
            ctx.quarantine.add(
                "target_does_not_fit_context", source=name, locator=locator, record=record
            )
            continue
        pairs.append((context, target))
        locators.append(locator)
    scores = ctx.scorer.continuation_scores(pairs)
    hits = [float(s.greedy) for s in scores]
    lls = [s.logprob for s in scores]
    details = [
        {"locator": loc, "target": pair[1], "logprob": round(s.logprob, 6), "greedy": s.greedy}
        for loc, pair, s in zip(locators, pairs, scores, strict=True)
    ]
    return TaskResult(
        name,
        task.type,
        "lm-eval-harness lambada_openai, 0-shot: context = passage up to its last space; "
        "acc = ' ' + last word is the greedy continuation; ppl = exp(-mean log p(' ' + word))",
        metrics={"acc": _mean(hits), "ppl": math.exp(-_mean(lls)) if lls else float("nan")},
        stderr={"acc": mean_stderr(hits)},
        examples=len(scores),
        details=details[:MAX_EXAMPLE_ROWS],
    )


# -------------------------------------------------------------------------------- perplexity


def wikitext_documents(task: Any, ctx: EvalContext) -> list[str]:
    """WikiText-2's articles, detokenized as lm-eval's wikitext."""
    limit = effective_limit(task, ctx.cfg)
    documents: list[str] = []
    for _, path in task_files(task, ctx.base_dir):
        documents.extend(wikitext_pages(read_text(path)))
    return documents[:limit] if limit else documents


def perplexity_documents(task: Any, ctx: EvalContext) -> list[str]:
    """Each JSONL record's `text_field`, or each text file."""
    limit = effective_limit(task, ctx.cfg)
    documents: list[str] = []
    name = task_name(task)
    for display, path in task_files(task, ctx.base_dir):
        if path.name.lower().removesuffix(".gz").endswith((".jsonl", ".ndjson")):
            for locator, record in jsonl_records([(display, path)], name, ctx.quarantine):
                text = record.get(task.text_field)
                if not isinstance(text, str) or not text.strip():
                    ctx.quarantine.add("missing_text", source=name, locator=locator, record=record)
                    continue
                documents.append(text)
        else:
            documents.append(read_text(path))
        if limit is not None and len(documents) >= limit:
            break
    return documents[:limit] if limit else documents


def run_perplexity(task: Any, ctx: EvalContext) -> TaskResult:
    return _run_perplexity(task, ctx, perplexity_documents(task, ctx), "")


def run_wikitext2(task: Any, ctx: EvalContext) -> TaskResult:
    source = "WikiText-2 articles, detokenized as lm-eval's wikitext; "
    return _run_perplexity(task, ctx, wikitext_documents(task, ctx), source)


def _run_perplexity(task: Any, ctx: EvalContext, documents: list[str], source: str) -> TaskResult:
    if not documents:
        raise TaskSkipped(f"{task.path}: no documents to score")
    scored = ctx.scorer.document_nll(documents)
    nats = sum(n for n, _ in scored)
    tokens = sum(t for _, t in scored)
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    words = sum(len(re.split(r"\s+", d)) for d in documents)
    loss = nats / tokens
    return TaskResult(
        task_name(task),
        task.type,
        f"{source}lm-eval-harness loglikelihood_rolling: each document after <|endoftext|>, "
        f"disjoint windows of {ctx.scorer.block_size} tokens; ppl per token, word_ppl per "
        "word, bpb per UTF-8 byte",
        metrics={
            "loss": loss,
            "ppl": math.exp(min(loss, 700.0)),
            "word_ppl": math.exp(min(nats / words, 700.0)),
            "bpb": nats / math.log(2) / n_bytes,
            "tokens": tokens,
            "bytes": n_bytes,
        },
        examples=len(documents),
    )


# ---------------------------------------------------------------------------- held-out shards


def run_heldout(task: Any, ctx: EvalContext) -> TaskResult:
    from pipeline.tokenizer.token_shards import split_paths

    if ctx.shards_dir is None or ctx.bytes_per_token is None:
        raise TaskSkipped("no val token shards known for this model (pass the shards folder)")
    val = split_paths(ctx.shards_dir, "val")
    if not val:
        raise TaskSkipped(f"{ctx.shards_dir}: no val-*.bin token shards")
    total, count = heldout_loss(ctx.net, val, ctx.cfg.batch_size, ctx.cfg.val_batches)
    if count == 0:
        raise TaskSkipped(f"{ctx.shards_dir}: the val split has fewer than 2 tokens")
    loss = total / count
    return TaskResult(
        task_name(task),
        task.type,
        f"the pipeline's val token shards, disjoint windows of {ctx.net.config.block_size} "
        "tokens; bpb = nats / ln 2 / (tokens x the split's bytes per token)",
        metrics={
            "loss": loss,
            "ppl": math.exp(min(loss, 700.0)),
            "bpb": bits_per_byte(loss, ctx.bytes_per_token),
            "tokens_evaluated": count,
        },
        examples=count,
    )


# ------------------------------------------------------------------------------- generations


def run_generations(task: Any, ctx: EvalContext) -> TaskResult:
    from pipeline.generate import generate_texts

    cfg = ctx.cfg
    texts = generate_texts(
        ctx.net,
        ctx.tokenizer,
        cfg.prompts,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        seed=cfg.seed,
        repetition_penalty=cfg.repetition_penalty,
    )
    how = (
        "greedy"
        if cfg.temperature == 0
        else f"sampled, temperature {cfg.temperature}, top_k {cfg.top_k}, seed {cfg.seed}"
    )
    if cfg.repetition_penalty != 1.0:
        how += f", repetition penalty {cfg.repetition_penalty:g}"
    return TaskResult(
        task_name(task),
        task.type,
        f"{how}, up to {cfg.max_new_tokens} new tokens",
        metrics={},
        examples=len(texts),
        generations=[{"prompt": p, "text": t} for p, t in zip(cfg.prompts, texts, strict=True)],
    )


# The language-model tasks' runners, by config class; pipeline.evaluate.runners adds the
# application tasks to them.
BASE_RUNNERS: dict[type, Callable[[Any, EvalContext], TaskResult]] = {
    HeldoutTask: run_heldout,
    PerplexityTask: run_perplexity,
    WikiText2Task: run_wikitext2,
    HellaSwagTask: run_hellaswag,
    MultipleChoiceTask: run_multiple_choice,
    LambadaTask: run_lambada,
    GenerationsTask: run_generations,
}


def eval_input_fingerprints(cfg: EvaluateConfig, base_dir: str) -> list[str]:
    """One hash per file task: its files' names, sizes and contents ("absent" when there are
    none), so the evaluate stage runs again when an eval file changes or appears."""
    import hashlib

    from pipeline.finetune.examples import named_input_files
    from pipeline.ingest.files import file_content_digest

    out = []
    for task in cfg.tasks:
        if getattr(task, "path", None) is None:
            continue
        try:
            # Application tasks read path, eval_path and target_path.
            named = (
                named_input_files(task, base_dir)
                if isinstance(task, ApplicationTask)
                else task_files(task, base_dir)
            )
            files = [[name, path.stat().st_size, file_content_digest(path)] for name, path in named]
        except (TaskSkipped, FileNotFoundError) as exc:
            files = [f"absent: {exc}"]
        payload = json.dumps({"task": task_name(task), "files": files}, sort_keys=True)
        out.append(hashlib.blake2b(payload.encode(), digest_size=16).hexdigest())
    return out
