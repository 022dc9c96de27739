"""Application-task metrics against values worked out by hand: SQuAD normalization, exact match
and token F1 (SQuAD v2's empty-answer rule), ROUGE-1/2/L, BLEU/chrF, accuracy and macro-F1 (and
its agreement with scikit-learn's definition, written out)."""

from __future__ import annotations

import math
import random

import pytest

from pipeline.evaluate.task_metrics import (
    accuracy,
    bleu_chrf,
    exact_match,
    macro_f1,
    normalize_answer,
    rouge,
    token_f1,
)


def test_normalize_answer_is_squads():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theater; anthem") == "theater anthem"  # articles only as words
    assert normalize_answer("  U.S.A.  ") == "usa"
    assert normalize_answer("the") == ""


def test_exact_match_is_the_best_over_golds():
    golds = ["Eiffel Tower", "Paris"]
    assert exact_match("the Eiffel Tower.", golds) == 1.0
    assert exact_match("paris", golds) == 1.0
    assert exact_match("Eiffel", golds) == 0.0


def test_token_f1_by_hand():
    # pred {eiffel, tower, in, paris}, gold {eiffel, tower}: P = 2/4, R = 2/2, F1 = 2/3
    assert token_f1("the Eiffel tower in Paris", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    # best over golds: vs "Paris" P = 1/2, R = 1 -> 2/3; vs "Eiffel Tower" 0
    assert token_f1("Paris France", ["Eiffel Tower", "Paris"]) == pytest.approx(2 / 3)
    # bag of tokens: cat x3 vs cat x1 + dog shares one token: P = 1/3, R = 1/2, F1 = 2/5
    assert token_f1("a cat cat cat", ["cat dog"]) == pytest.approx(0.4)
    assert token_f1("dog", ["cat"]) == 0.0


def test_empty_answers_follow_squad_v2():
    # an answer that normalizes to nothing scores 1 only against a gold that does too
    assert token_f1("", [""]) == 1.0
    assert token_f1("The", ["a"]) == 1.0
    assert token_f1("the", ["no answer"]) == 0.0
    assert token_f1("something", [""]) == 0.0
    assert exact_match("", []) == 1.0  # no gold answers: unanswerable, as SQuAD v2's script
    with pytest.raises(TypeError):
        exact_match("x", "x")


def test_rouge_by_hand():
    scores = rouge(["the cat sat on the mat"], ["the cat was on the mat"])
    # unigrams: 5 of 6 shared each way -> 5/6; bigrams: the-cat, on-the, the-mat of 5 -> 3/5;
    # longest common subsequence: the cat on the mat (5) -> 5/6
    assert scores["rouge1"] == [pytest.approx(5 / 6)]
    assert scores["rouge2"] == [pytest.approx(3 / 5)]
    assert scores["rougeL"] == [pytest.approx(5 / 6)]
    # per example; word order: LCS of "w x y z" and "w y x z" is 3 of 4, no bigram shared
    scores = rouge(["ward xylo yarn zinc", "same words"], ["ward yarn xylo zinc", "same words"])
    assert scores["rouge1"] == [1.0, 1.0]
    assert scores["rouge2"] == [0.0, 1.0]
    assert scores["rougeL"] == [pytest.approx(0.75), 1.0]
    # the Porter stemmer: cats -> cat, running / runs -> run
    assert rouge(["cats running"], ["cat runs"])["rouge1"] == [1.0]
    assert rouge([""], [""]) == {"rouge1": [0.0], "rouge2": [0.0], "rougeL": [0.0]}
    with pytest.raises(ValueError):
        rouge(["a"], [])


def test_bleu_and_chrf():
    corpus = ["the cat sat on the mat", "a dog barked at the mailman"]
    assert bleu_chrf(corpus, corpus) == {"bleu": pytest.approx(100), "chrf": pytest.approx(100)}
    assert bleu_chrf(["xyz qrs"], ["abc def"])["bleu"] == 0.0
    # every n-gram precision is 1 and the hypothesis is 5 words for a 6-word reference:
    # BLEU = brevity penalty = exp(1 - 6/5)
    scores = bleu_chrf(["a b c d e"], ["a b c d e f"])
    assert scores["bleu"] == pytest.approx(100 * math.exp(-0.2))
    assert 0 < scores["chrf"] < 100
    with pytest.raises(ValueError):
        bleu_chrf([], [])


def test_accuracy():
    assert accuracy([0, 1, 2, 1], [0, 1, 1, 1]) == 0.75
    with pytest.raises(ValueError):
        accuracy([], [])


def sklearn_macro_f1(predictions, labels, num_labels):
    """scikit-learn's f1_score(average="macro", labels=range(num_labels), zero_division=0)."""
    f1s = []
    for c in range(num_labels):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels, strict=True))
        predicted, actual = predictions.count(c), labels.count(c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(f1s) / num_labels


def test_macro_f1_by_hand():
    labels, predictions = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # class 0: TP 1, FP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 4/5; class 2: never predicted -> 0
    assert macro_f1(predictions, labels, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a class neither predicted nor present still counts, as 0 (labels=range(num_labels))
    assert macro_f1(predictions, labels, 4) == pytest.approx((0.5 + 0.8) / 4)
    assert macro_f1([1, 1], [1, 1], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        macro_f1([0, 3], [0, 1], 3)


def test_macro_f1_agrees_with_sklearn_definition():
    rng = random.Random(0)
    for _ in range(50):
        k, n = rng.randint(2, 5), rng.randint(1, 12)
        labels = [rng.randrange(k) for _ in range(n)]
        predictions = [rng.randrange(k) for _ in range(n)]
        expected = sklearn_macro_f1(predictions, labels, k)
        assert macro_f1(predictions, labels, k) == pytest.approx(expected)
