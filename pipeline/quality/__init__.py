"""Quality: document shards in, the same scored by a trained classifier (and filtered) out.

In: a folder of document shards and the pipeline config (`quality`: a reference source to
train on, or a classifier to reuse; a threshold or a share to keep). Out: the classifier
(safetensors + JSON), every document's `quality_score` (`scores.parquet`, and in the kept
documents' meta), the kept documents, the quarantine, and a report (held-out accuracy and AUC,
score histogram, a document at each decile, scoring docs/s).

    run_quality(in_dir, out_dir, config, tracking_uri, executor) -> manifest body
"""

from pipeline.quality.classifier import (
    ClassifierError,
    QualityClassifier,
    heldout_measures,
    load_classifier,
    train_classifier,
)
from pipeline.quality.stage import (
    CLASSIFIER_DIR,
    SCORES_FILE,
    keep_decisions,
    reference_inputs,
    run_quality,
)

__all__ = [
    "CLASSIFIER_DIR",
    "SCORES_FILE",
    "ClassifierError",
    "QualityClassifier",
    "heldout_measures",
    "keep_decisions",
    "load_classifier",
    "reference_inputs",
    "run_quality",
    "train_classifier",
]
