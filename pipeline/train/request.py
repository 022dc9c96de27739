"""The training request: everything the training process needs, as one typed JSON file.

In: what the orchestrator resolved: the model (a `ModelConfig` to build a new GPT from, or the
exact `GPTConfig` of the saved model training continues, as fine-tuning does), the train
config, the data (`PretrainData`: token shards; `SFTData`: prepared (prompt, response)
examples), the output folder, the tokenizer, the weights to start from, LoRA, the MLflow run.
Out: `TrainRequest`, written with `to_json(path)` and read back, validated, with
`from_json(path)` by `python -m pipeline.train REQUEST.json`. The trainer builds the data module
that `data.kind` names (pipeline.train.data.DATA_MODULES; `SFTData.data_module` is imported
first, it registers "finetune"). This module imports no torch or Lightning, so the orchestrator
can build a request cheaply.

Secrets stay out of the file: it holds the tracking URI redacted (`user:password@` ->
`***:***@`) and is readable by its owner only (0600); the full URI goes to the training process
in its environment (`environment()` -> MLFLOW_TRACKING_URI), and `from_json` takes it from there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.config import LoraConfig, ModelConfig, TrainConfig
from pipeline.credentials import REDACTED, has_credentials, redact
from pipeline.model.config import GPTConfig
from pipeline.outputs import write_json_atomic


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainData(_Part):
    """Token shards: train-*.bin and val-*.bin in `shards_dir`."""

    kind: Literal["shards"] = "shards"
    shards_dir: str
    vocab_size: int = Field(gt=0, description="the tokenizer's: a new model's embedding size")
    bytes_per_token_val: float | None = Field(None, gt=0, description="for val bits per byte")


class SFTData(_Part):
    """(prompt, response) examples prepared by pipeline.finetune (train.jsonl, val.jsonl)."""

    kind: Literal["finetune"] = "finetune"
    examples_dir: str
    # Imported by the training process before its data module is built: it registers "finetune".
    data_module: str = "pipeline.finetune.data"
    packing: bool = True
    weights: dict[str, float] = Field(default_factory=dict, description="task -> sampling weight")


class TrainRequest(_Part):
    model: Annotated[ModelConfig | GPTConfig, Field(union_mode="left_to_right")]
    train: TrainConfig
    data: Annotated[PretrainData | SFTData, Field(discriminator="kind")]
    out_dir: str  # checkpoints/, final/, train_metrics.json, loss_curve.png
    tokenizer_path: str | None = None  # copied into final/ when given
    init_from: str | None = None  # a model folder whose weights start training (not a resume)
    # the earlier run's trainer_state.ckpt whose optimizer moments go with init_from's weights
    init_state_from: str | None = None
    lora: LoraConfig | None = None  # adapters only train (fine-tuning)
    mlflow_tracking_uri: str | None = None  # None: no MLflow logging
    mlflow_run_id: str | None = None  # an existing run to log into; None: a new run
    mlflow_experiment: str = "llmpipe"  # used only when a new run is created

    @model_validator(mode="after")
    def _new_model_has_a_vocabulary(self) -> TrainRequest:
        if isinstance(self.model, ModelConfig) and not isinstance(self.data, PretrainData):
            raise ValueError(
                "a new model (model: ModelConfig) takes its vocab_size from PretrainData; "
                "continuing a saved model takes its exact GPTConfig"
            )
        return self

    def architecture(self) -> GPTConfig:
        """The GPT to train: the saved model's exact config, or a new one from the model
        config and the tokenizer's vocabulary size."""
        if isinstance(self.model, GPTConfig):
            return self.model
        assert isinstance(self.data, PretrainData)
        return GPTConfig.from_model_config(self.model, self.data.vocab_size)

    def to_dict(self) -> dict[str, Any]:
        """The request as written: the tracking URI without its credentials."""
        data = self.model_dump(mode="json")
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
        """Validate a written request; ValueError naming each bad key."""
        uri = raw.get("mlflow_tracking_uri")
        if uri and REDACTED in uri:  # written without its credentials
            raw = {**raw, "mlflow_tracking_uri": _uri_from_environment(uri)}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"invalid train request: {problems}") from None

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
