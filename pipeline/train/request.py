"""The resolved training request: everything the training process needs, as one JSON file.

In: the model and train sections of the pipeline config plus the paths and ids the orchestrator
resolved (token shards, output folder, tokenizer, MLflow run); for fine-tuning, the starting
model's exact config, the prepared examples and the LoRA settings.
Out: `TrainRequest`, written with `to_json(path)` and read back with `from_json(path)` by
`python -m pipeline.train REQUEST.json`. This module imports no torch or Lightning, so the
orchestrator can build a request cheaply.

Secrets stay out of the file: it holds the tracking URI redacted (`user:password@` ->
`***:***@`) and is readable by its owner only (0600); the full URI goes to the training process
in its environment (`environment()` -> MLFLOW_TRACKING_URI), and `from_json` takes it from there.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.config import ModelConfig, TrainConfig
from pipeline.credentials import REDACTED, has_credentials, redact
from pipeline.outputs import write_json_atomic


@dataclass
class TrainRequest:
    model: dict[str, Any]  # ModelConfig fields
    train: dict[str, Any]  # TrainConfig fields
    vocab_size: int
    eot_id: int
    shards_dir: str  # folder with train-*.bin and val-*.bin token shards
    out_dir: str  # checkpoints/, final/, train_metrics.json, loss_curve.png
    tokenizer_path: str | None = None  # copied into final/ when given
    mlflow_tracking_uri: str | None = None  # None: no MLflow logging
    mlflow_run_id: str | None = None  # an existing run to log into; None: a new run
    mlflow_experiment: str = "llmpipe"  # used only when a new run is created
    bytes_per_token_val: float | None = None  # for val bits per byte
    init_from: str | None = None  # a model folder whose weights start training (not a resume)
    # the earlier run's trainer_state.ckpt whose optimizer moments go with init_from's weights
    init_state_from: str | None = None
    # The exact model (GPTConfig fields) when it comes from a checkpoint, as in fine-tuning;
    # None: built from `model` and vocab_size.
    gpt_config: dict[str, Any] | None = None
    # Fine-tuning: {"examples_dir", "packing", "weights": {task: w}, "lora": LoraConfig | None};
    # None: pretraining on shards_dir.
    finetune: dict[str, Any] | None = None

    @classmethod
    def from_configs(cls, model: ModelConfig, train: TrainConfig, **kwargs: Any) -> TrainRequest:
        return cls(
            model=model.model_dump(mode="json"), train=train.model_dump(mode="json"), **kwargs
        )

    def model_config(self) -> ModelConfig:
        return ModelConfig.model_validate(self.model)

    def train_config(self) -> TrainConfig:
        return TrainConfig.model_validate(self.train)

    def to_dict(self) -> dict[str, Any]:
        """The request as written: the tracking URI without its credentials."""
        data = asdict(self)
        if self.mlflow_tracking_uri:
            data["mlflow_tracking_uri"] = redact(self.mlflow_tracking_uri)
        return data

    def environment(self) -> dict[str, str]:
        """What the training process needs in its environment beside the file."""
        return {"MLFLOW_TRACKING_URI": self.mlflow_tracking_uri} if self.mlflow_tracking_uri else {}

    def to_json(self, path: str | Path) -> Path:
        """Write the request atomically (tmp file + rename), readable by its owner only."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_dict(), mode=0o600)
        return path

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainRequest:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown keys in train request: {', '.join(unknown)}")
        uri = raw.get("mlflow_tracking_uri")
        if uri and REDACTED in uri:  # written without its credentials
            raw = {**raw, "mlflow_tracking_uri": _uri_from_environment(uri)}
        return cls(**raw)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainRequest:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"train request not found: {path}")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _uri_from_environment(redacted: str) -> str:
    """The full tracking URI, from $MLFLOW_TRACKING_URI, for a request written without it."""
    full = os.environ.get("MLFLOW_TRACKING_URI", "")
    if has_credentials(full) and redact(full) == redacted:
        return full
    raise ValueError(
        f"the request's tracking URI {redacted} was written without its credentials: "
        "set MLFLOW_TRACKING_URI to the full URI"
    )
