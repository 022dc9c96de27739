"""Pipeline configuration: YAML in, typed and validated `PipelineConfig` out.

`load_config(path, overrides)` reads a YAML file, applies `section.key=value` overrides and
validates the result with the pydantic models below. Unknown keys and bad values raise
`ConfigError`, whose message names each offending key and what was expected.

Fields marked `operational` (worker counts, log intervals, paths) do not change a stage's
output, so they are left out of the stage fingerprints (see `fingerprint_fields`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the keys at fault."""


def operational(default: Any, **kwargs: Any) -> Any:
    """A field that changes how a stage runs but not what it produces."""
    return Field(default, json_schema_extra={"operational": True}, **kwargs)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------- sources


class _RecordSource(Section):
    path: str = Field(description="a file, a folder or a glob; relative paths are from the config")
    name: str | None = Field(None, description="label for counts; defaults to type:path")
    text_field: str = "text"
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="document column -> record field, for id/url/title/published/lang",
    )

    @field_validator("fields")
    @classmethod
    def _mappable_columns(cls, fields: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(fields) - {"id", "url", "title", "published", "lang"})
        if unknown:
            raise ValueError(
                f"fields can map id, url, title, published, lang; not {', '.join(unknown)}"
            )
        return fields


class JsonlSource(_RecordSource):
    type: Literal["jsonl"]


class CsvSource(_RecordSource):
    type: Literal["csv"]
    delimiter: str = Field(",", min_length=1, max_length=1)


class ParquetSource(_RecordSource):
    type: Literal["parquet"]


class TextSource(_RecordSource):
    type: Literal["text"]
    split: Literal["file", "paragraphs"] = Field(
        "file", description="one document per file, or per blank-line-separated block"
    )


SourceConfig = Annotated[
    JsonlSource | CsvSource | ParquetSource | TextSource, Field(discriminator="type")
]

# ------------------------------------------------------------------------------------ stages


class IngestConfig(Section):
    max_docs_per_shard: int = Field(10_000, gt=0)


class CleanConfig(Section):
    unicode_form: Literal["NFC", "NFKC"] = "NFC"
    min_words: int = Field(20, ge=0)
    max_words: int = Field(200_000, gt=0)
    min_mean_word_length: float = Field(2.5, ge=0)
    max_mean_word_length: float = Field(12.0, gt=0)
    min_alpha_word_ratio: float = Field(0.7, ge=0, le=1)
    max_symbol_word_ratio: float = Field(0.1, ge=0)
    max_duplicate_line_fraction: float = Field(0.3, ge=0, le=1)
    max_docs_per_shard: int = operational(10_000, gt=0)


class DedupConfig(Section):
    method: Literal["exact"] = "exact"
    max_docs_per_shard: int = operational(10_000, gt=0)


class TokenizerConfig(Section):
    vocab_size: int = Field(8192, ge=260, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    special_tokens: list[str] = Field(default_factory=lambda: ["<|endoftext|>", "<|pad|>"])
    batch_size: int = operational(1000, gt=0)

    @model_validator(mode="after")
    def _eot_first(self) -> TokenizerConfig:
        if not self.special_tokens or self.special_tokens[0] != "<|endoftext|>":
            raise ValueError("special_tokens must start with '<|endoftext|>'")
        return self


class ShardsConfig(Section):
    val_fraction: float = Field(0.1, gt=0, lt=1)
    tokens_per_shard: int = Field(50_000_000, gt=0)
    batch_size: int = operational(1000, gt=0)


class ModelConfig(Section):
    n_layer: int = Field(4, gt=0)
    n_head: int = Field(4, gt=0)
    n_embd: int = Field(128, gt=0)
    block_size: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    bias: bool = True
    tie_embeddings: bool = True

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class TrainConfig(Section):
    seed: int = 1337
    max_steps: int = Field(300, gt=0)
    batch_size: int = Field(16, gt=0)
    grad_accum_steps: int = Field(1, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    val_every_steps: int = Field(100, gt=0)
    val_batches: int = Field(20, gt=0)
    checkpoint_every_steps: int = Field(100, gt=0)
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    compile: bool = False
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, gt=0)
    keep_last_checkpoints: int = operational(2, gt=0)
    log_every_steps: int = operational(10, gt=0)
    progress_bar: bool = operational(True)


class EvaluateConfig(Section):
    val_batches: int | None = Field(None, gt=0, description="None = the whole val split")
    batch_size: int = Field(16, gt=0)
    prompts: list[str] = Field(default_factory=lambda: ["The", "In 2005 ,", "He was born in"])
    max_new_tokens: int = Field(40, gt=0)
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(50, gt=0)
    seed: int = 1234


class RegisterConfig(Section):
    model_name: str = Field("llmpipe-gpt", min_length=1)
    metric: str = "val_bpb"
    mode: Literal["min", "max"] = "min"


class ExecutionConfig(Section):
    """Where the data stages' units of work run; none of it changes their output."""

    workers: int = operational(1, ge=1, description="worker processes for data stages")
    runner: Literal["local", "dask"] = operational("local")
    dask_address: str | None = operational(None, description="an existing Dask scheduler")


class TrackingConfig(Section):
    experiment: str = operational("llmpipe")
    mlflow_tracking_uri: str | None = operational(
        None, description="None: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db"
    )


# `register` is the stage's name; pydantic only warns that it shadows ABCMeta.register.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class PipelineConfig(Section):
    name: str = "llmpipe"
    sources: list[SourceConfig] = Field(min_length=1)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    register: RegisterConfig = Field(default_factory=RegisterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    workdir: str = operational("work", description="where stage outputs live")
    base_dir: str = operational(".", description="relative source paths resolve from here")


# ----------------------------------------------------------------------------------- loading


def fingerprint_fields(section: BaseModel) -> dict[str, Any]:
    """The fields of a section that change its output (operational ones left out)."""
    out = {}
    for name, field in type(section).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("operational"):
            continue
        value = getattr(section, name)
        out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return out


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    # Discriminated unions add the tag to the path (sources.0.jsonl.path): keep it readable.
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "missing":
        return f"{loc}: required key is missing"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        return (
            f"{loc}.type: unknown source type {error['input'].get('type')!r} (expected {expected})"
        )
    if kind == "union_tag_not_found":
        return f"{loc}: a source needs a 'type' key"
    return f"{loc}: {error['msg']} (got {error.get('input')!r})"


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Names a section accepts, to suggest them after an unknown key."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def validate_config(raw: dict[str, Any]) -> PipelineConfig:
    """Validate a config dict; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            line = _describe(error)
            if error["type"] == "extra_forbidden":
                keys = _valid_keys(PipelineConfig, error["loc"])
                if keys:
                    line += f" (expected one of: {', '.join(keys)})"
            lines.append("  - " + line)
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML) to a config dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        parts = key.split(".")
        node = raw
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[int(part)]
                continue
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        leaf = parts[-1]
        parsed = yaml.safe_load(value) if value else ""
        if isinstance(node, list):
            node[int(leaf)] = parsed
        else:
            node[leaf] = parsed
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a YAML config; relative source paths resolve from its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config must be a mapping of sections")
    raw.setdefault("base_dir", str(path.resolve().parent))
    return validate_config(apply_overrides(raw, overrides or []))


def resolve_path(config: PipelineConfig, path: str) -> str:
    """A source path as given, or joined to the config's folder when relative."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(Path(config.base_dir) / path)
