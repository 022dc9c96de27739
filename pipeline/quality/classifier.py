"""A fastText-style quality classifier: texts and labels in, a score in [0, 1] per text out.

The features are fastText's: word n-grams (1..`word_ngrams`), hashed into 2**`hash_bits`
buckets (scikit-learn's `HashingVectorizer`, murmurhash3, lowercase, L2-normalized), and the
model is a logistic regression over them (fastText's linear classifier without its low-rank
embedding). Only the first `max_chars` characters of a text are looked at, so a huge page costs
no more than a long article. Scoring is one sparse matrix product: a few thousand documents per
second on one core.

Stored in a safe format, never pickle: `model.safetensors` (the weights and the bias) and
`classifier.json` (how texts become features, how it was trained, its held-out measures). A
classifier file is user input, so `load_classifier` checks the format, the version, every
parameter and the weights' shape and values before using them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

FORMAT = "llmpipe-hashed-ngram-logistic-regression"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
DESCRIPTION_FILE = "classifier.json"
MAX_FILE_BYTES = 1 << 30  # a 2**24-bucket model is 64 MB; anything far larger is refused


class ClassifierError(ValueError):
    """A classifier file that cannot be used; the message says what is wrong."""


@dataclass
class QualityClassifier:
    hash_bits: int
    word_ngrams: int
    max_chars: int
    weights: np.ndarray  # float32, 2**hash_bits
    bias: float
    info: dict[str, Any] = field(default_factory=dict)  # training data, held-out measures

    def _vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(
            n_features=2**self.hash_bits,
            ngram_range=(1, self.word_ngrams),
            alternate_sign=False,
            norm="l2",
            lowercase=True,
            dtype=np.float32,
        )

    def features(self, texts: list[str]) -> Any:
        return self._vectorizer().transform([t[: self.max_chars] for t in texts])

    def score(self, texts: list[str]) -> np.ndarray:
        """The probability that each text is like the reference text."""
        logits = self.features(texts) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weights": self.weights.astype(np.float32), "bias": np.array([self.bias], np.float32)},
            str(folder / WEIGHTS_FILE),
        )
        description = {
            "format": FORMAT,
            "version": VERSION,
            "hash_bits": self.hash_bits,
            "word_ngrams": self.word_ngrams,
            "max_chars": self.max_chars,
            "features": "sklearn HashingVectorizer: word n-grams, lowercase, murmurhash3, l2",
            **self.info,
        }
        (folder / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2), "utf-8")


def train_classifier(
    texts: list[str],
    labels: list[int],
    hash_bits: int,
    word_ngrams: int,
    max_chars: int,
    regularization: float,
) -> QualityClassifier:
    """Fit the classifier on texts labelled 1 (reference) or 0 (web); classes are balanced."""
    from sklearn.linear_model import LogisticRegression

    if len(set(labels)) != 2:
        raise ValueError("training a quality classifier needs both reference and web texts")
    shell = QualityClassifier(hash_bits, word_ngrams, max_chars, np.zeros(0, np.float32), 0.0)
    model = LogisticRegression(C=regularization, class_weight="balanced", max_iter=1000)
    model.fit(shell.features(texts), np.asarray(labels))
    shell.weights = model.coef_[0].astype(np.float32)
    shell.bias = float(model.intercept_[0])
    return shell


def heldout_measures(scores: np.ndarray, labels: list[int]) -> dict[str, float]:
    """Accuracy at 0.5 and ROC AUC of scores against 0/1 labels."""
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(labels)
    measures = {"accuracy": float(np.mean((scores >= 0.5) == (truth == 1)))}
    measures["auc"] = float(roc_auc_score(truth, scores)) if len(set(labels)) == 2 else math.nan
    return measures


def classifier_files(path: Path) -> tuple[Path, Path]:
    """(weights, description) of a classifier given as its folder or its .safetensors file."""
    path = Path(path)
    if not path.exists():
        raise ClassifierError(f"quality.classifier: {path} does not exist")
    folder = path if path.is_dir() else path.parent
    weights = path if path.is_file() else folder / WEIGHTS_FILE
    description = folder / DESCRIPTION_FILE
    for needed in (weights, description):
        if not needed.is_file():
            raise ClassifierError(
                f"quality.classifier: no {needed.name} at {folder} (give a folder written by "
                f"the quality stage, its {WEIGHTS_FILE}, or runs:/RUN_ID/classifier)"
            )
    return weights, description


def load_classifier(path: Path) -> QualityClassifier:
    """Read and check a stored classifier (safetensors + JSON; nothing is executed)."""
    weights_file, description_file = classifier_files(path)
    for file in (weights_file, description_file):
        if file.stat().st_size > MAX_FILE_BYTES:
            raise ClassifierError(f"{file}: larger than {MAX_FILE_BYTES} bytes")
    try:
        description = json.loads(description_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ClassifierError(f"{description_file}: not JSON ({exc})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ClassifierError(f"{description_file}: not a {FORMAT} classifier")
    if description.get("version") != VERSION:
        raise ClassifierError(
            f"{description_file}: version {description.get('version')!r}, expected {VERSION}"
        )
    bits, ngrams, chars = (description.get(k) for k in ("hash_bits", "word_ngrams", "max_chars"))
    for key, value, low, high in (
        ("hash_bits", bits, 10, 24),
        ("word_ngrams", ngrams, 1, 3),
        ("max_chars", chars, 1, 10**9),
    ):
        if not isinstance(value, int) or not low <= value <= high:
            raise ClassifierError(f"{description_file}: {key} = {value!r}, expected {low}..{high}")
    try:
        tensors = load_file(str(weights_file))
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ClassifierError(f"{weights_file}: not a safetensors file ({exc})") from None
    weights, bias = tensors.get("weights"), tensors.get("bias")
    if weights is None or bias is None or weights.shape != (2**bits,) or bias.shape != (1,):
        raise ClassifierError(
            f"{weights_file}: expected tensors weights [{2**bits}] and bias [1], got "
            + ", ".join(f"{k} {list(v.shape)}" for k, v in tensors.items())
        )
    if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
        raise ClassifierError(f"{weights_file}: weights that are not finite numbers")
    stored = ("format", "version", "hash_bits", "word_ngrams", "max_chars", "features")
    info = {k: v for k, v in description.items() if k not in stored}
    return QualityClassifier(
        bits, ngrams, chars, weights.astype(np.float32), float(bias[0]), info=info
    )
