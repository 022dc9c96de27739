"""Scores for the application tasks (QA, summarization, translation, classification).

In: model predictions and their references (strings, or label indices for classification).
Out: plain floats, or per-example lists of floats, computed as the standard tools define them:
- QA: SQuAD's official `normalize_answer`, `exact_match` and token `token_f1` (0..1, the best
  over the gold answers; SQuAD v2's rule for answers that normalize to nothing).
- summarization: ROUGE-1/2/L F-measures per example (Google's `rouge-score`, Porter stemmer).
- translation: corpus BLEU and chrF (`sacrebleu`, 0..100, its default 13a tokenizer).
- classification: accuracy, and macro-F1 as scikit-learn's
  `f1_score(average="macro", labels=range(num_labels), zero_division=0)`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import sacrebleu
from rouge_score import rouge_scorer

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


# ------------------------------------------------------------------------------------ QA


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, drop punctuation and the articles a/an/the, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golds: Sequence[str]) -> Sequence[str]:
    if isinstance(golds, str):  # a bare string would be scored per character
        raise TypeError("golds must be a sequence of answer strings, not one string")
    return golds or [""]  # as SQuAD v2's script: no gold answer means "" (unanswerable)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals some normalized gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(gold) for gold in _golds(golds)))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # SQuAD v2: an empty side scores 1 only if both are
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1 (bag of normalized tokens), the best over the gold answers."""
    return max(_f1(prediction, gold) for gold in _golds(golds))


# ------------------------------------------------------------------ summarization, translation


def _check_pairs(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1, ROUGE-2 and ROUGE-L F-measures in [0, 1] (rouge-score, stemmed).

    rouge-score's tokenizer keeps only ASCII letters and digits, so it suits English summaries.
    """
    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    out: dict[str, list[float]] = {key: [] for key in ROUGE_KEYS}
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)  # (target, prediction) order
        for key in ROUGE_KEYS:
            out[key].append(float(scores[key].fmeasure))  # an int 0 when empty
    return out


def bleu_chrf(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (0..100) of the predictions against one reference each (sacrebleu)."""
    _check_pairs(predictions, references)
    if not predictions:
        raise ValueError("no predictions to score")
    predictions, references = list(predictions), [list(references)]
    return {
        "bleu": float(sacrebleu.corpus_bleu(predictions, references).score),
        "chrf": float(sacrebleu.corpus_chrf(predictions, references).score),
    }


# -------------------------------------------------------------------------- classification


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of predictions equal to their label."""
    _check_pairs(predictions, labels)
    if not labels:
        raise ValueError("no predictions to score")
    return sum(int(p) == int(y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_labels: int) -> float:
    """Mean over the classes 0..num_labels-1 of each class's F1 = 2TP / (2TP + FP + FN).

    As scikit-learn's `f1_score(average="macro", labels=range(num_labels), zero_division=0)`:
    every class counts, and one never predicted nor present in the labels scores 0.
    """
    _check_pairs(predictions, labels)
    if not labels or num_labels < 1:
        raise ValueError("no predictions or no classes to score")
    predictions, labels = [int(p) for p in predictions], [int(y) for y in labels]
    if any(not 0 <= v < num_labels for v in (*predictions, *labels)):
        raise ValueError(f"a label or prediction is outside 0..{num_labels - 1}")
    tp, fp, fn = [0] * num_labels, [0] * num_labels, [0] * num_labels
    for p, y in zip(predictions, labels, strict=True):
        if p == y:
            tp[p] += 1
        else:
            fp[p] += 1
            fn[y] += 1
    f1s = [
        2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else 0.0
        for c in range(num_labels)
    ]
    return sum(f1s) / num_labels
