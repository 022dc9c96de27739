"""Pipeline configuration: YAML in, typed and validated `PipelineConfig` out.

`load_config(path, overrides)` reads a YAML file, applies `section.key=value` overrides and
validates the result with the pydantic models below. Unknown keys (with the closest known one),
bad values, a task file that does not exist, a `name` that is not a plain name and a
`train.launcher` outside the allowed ones raise `ConfigError`, whose message names each
offending key and what was expected; `require_source_files` does the same for sources that
match no file, before a run starts anything.

Fields marked `operational` (worker counts, log intervals, paths) do not change a stage's
output, so they are left out of the stage fingerprints (see `fingerprint_fields`).
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import json
import os
import re
import shlex
import types
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.special_tokens import DEFAULT_SPECIAL_TOKENS, EOT_TOKEN


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the keys at fault."""


def operational(default: Any, **kwargs: Any) -> Any:
    """A field that changes how a stage runs but not what it produces."""
    return Field(default, json_schema_extra={"operational": True}, **kwargs)


def added_later(default: Any = None, **kwargs: Any) -> Any:
    """A field (or a section, with `default_factory`) added after outputs were made without it:
    at its default it stays out of the fingerprints and the config hash, so the outputs made
    before it existed are still reused."""
    if "default_factory" in kwargs:
        return Field(json_schema_extra={"omit_default": True}, **kwargs)
    return Field(default, json_schema_extra={"omit_default": True}, **kwargs)


def _at_omitted_default(field: Any, value: Any) -> bool:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if not extra.get("omit_default"):
        return False
    default = field.default_factory() if field.default_factory else field.default
    return value == default


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ------------------------------------------------------------------------- type registries

# Source and task config classes by their `type` tag. The `sources`/`tasks` unions of the schema
# are built from these, so a new type is one class with `@register_source`/`@register_task`
# (in any module imported before the config is read); the stage packages find its behaviour
# from the class (see pipeline/ingest/kinds.py, pipeline/finetune/examples.py,
# pipeline/evaluate/runners.py).
SOURCE_TYPES: dict[str, type[BaseModel]] = {}
TASK_TYPES: dict[str, type[BaseModel]] = {}


def type_tag(cls: type[BaseModel]) -> str:
    """The `type` a config class answers to (its `type: Literal[...]` field)."""
    field = cls.model_fields.get("type")
    tags = typing.get_args(field.annotation) if field is not None else ()
    if len(tags) != 1 or not isinstance(tags[0], str):
        raise TypeError(f'{cls.__name__} needs a field `type: Literal["its-name"]`')
    return tags[0]


def _register(table: dict[str, type[BaseModel]], cls: Any) -> Any:
    tag = type_tag(cls)
    known = table.get(tag)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise TypeError(f"type {tag!r} is already {known.__name__}")
    table[tag] = cls
    if "PipelineConfig" in globals():  # a type added after the schema was built
        _rebuild_schema()
    return cls


def register_source(cls: Any) -> Any:
    """Class decorator: `sources` (and `quality.positives`) accept this source type."""
    return _register(SOURCE_TYPES, cls)


def register_task(cls: Any) -> Any:
    """Class decorator: `evaluate.tasks` accept this task type, and `finetune.tasks` too when it
    is an `ApplicationTask`. Its metrics are prefixed by its `default_name` unless named."""
    if not isinstance(getattr(cls, "default_name", None), str):
        raise TypeError(f"{cls.__name__} needs `default_name: ClassVar[str]`")
    return _register(TASK_TYPES, cls)


def unregister(cls: Any) -> None:
    """Take a registered source or task type out again (tests that add one)."""
    for table in (SOURCE_TYPES, TASK_TYPES):
        if table.get(type_tag(cls)) is cls:
            del table[type_tag(cls)]
    _rebuild_schema()


def _tagged(classes: list[type[BaseModel]]) -> Any:
    return Annotated[Union[tuple(classes)], Field(discriminator="type")]  # noqa: UP007


# ----------------------------------------------------------------------------------- sources


OPTIONAL_SOURCE = added_later(
    False,
    description="a path that matches no file is skipped (and counted in ingest's quarantine) "
    "instead of being a config error",
)
_FOLLOW_LINKS = "read symlinks that lead out of the source's folder (skipped and counted if not)"


class Source(Section):
    """A source type's config. `folder_suffixes`: the files a folder source picks up (a file or
    a glob given explicitly is read whatever its name); `local_only`: False when `path` may
    also name something that is no file (a hub dataset)."""

    folder_suffixes: ClassVar[tuple[str, ...]] = ()
    local_only: ClassVar[bool] = True


class RecordSource(Source):
    """A source whose files hold records (one document each)."""

    path: str = Field(description="a file, a folder or a glob; relative paths are from the config")
    name: str | None = Field(None, description="label for counts; defaults to type:path")
    optional: bool = OPTIONAL_SOURCE
    follow_links: bool = added_later(False, description=_FOLLOW_LINKS)
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


@register_source
class JsonlSource(RecordSource):
    type: Literal["jsonl"]
    folder_suffixes = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


@register_source
class CsvSource(RecordSource):
    type: Literal["csv"]
    folder_suffixes = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
    delimiter: str = Field(",", min_length=1, max_length=1)


@register_source
class ParquetSource(RecordSource):
    type: Literal["parquet"]
    folder_suffixes = (".parquet", ".pq")


@register_source
class TextSource(RecordSource):
    type: Literal["text"]
    folder_suffixes = (".txt", ".text", ".md", ".txt.gz", ".text.gz", ".md.gz")
    split: Literal["file", "paragraphs"] = Field(
        "file", description="one document per file, or per blank-line-separated block"
    )


@register_source
class HfSource(RecordSource):
    """A Hugging Face `datasets` source: a hub name (needs network), a folder written by
    `Dataset.save_to_disk`, or local data files (parquet, json/jsonl, csv, arrow; a glob)."""

    type: Literal["hf"]
    folder_suffixes = (
        ".parquet",
        ".jsonl",
        ".json",
        ".csv",
        ".arrow",
        ".jsonl.gz",
        ".json.gz",
        ".csv.gz",
    )
    local_only = False  # a hub name is no file
    subset: str | None = Field(None, description="the dataset's configuration name, on the hub")
    split: str = "train"
    revision: str | None = Field(None, description="a hub branch, tag or commit")


class PageSource(Source):
    """A source of web pages or feeds, whose HTML is extracted in the sandboxed worker."""

    path: str = Field(description="a file, a folder or a glob; relative paths are from the config")
    name: str | None = Field(None, description="label for counts; defaults to type:path")
    optional: bool = OPTIONAL_SOURCE
    follow_links: bool = added_later(False, description=_FOLLOW_LINKS)


@register_source
class WarcSource(PageSource):
    """WARC / WARC.gz (and ARC) files; also fsspec URLs. Only `response` records with an
    HTML content type become documents, with the record's URL and date."""

    type: Literal["warc"]
    folder_suffixes = (".warc", ".warc.gz", ".arc", ".arc.gz")


@register_source
class HtmlSource(PageSource):
    """Saved HTML pages, one page per file (.html, .htm, .xhtml, optionally .gz)."""

    type: Literal["html"]
    folder_suffixes = (".html", ".htm", ".xhtml", ".html.gz", ".htm.gz", ".xhtml.gz")
    urls: str | None = Field(
        None,
        description="a JSONL or CSV file with `file` (relative to the source folder) and `url`",
    )


@register_source
class FeedSource(PageSource):
    """RSS / Atom / RDF / JSON Feed files: one document per item."""

    type: Literal["feed"]
    folder_suffixes = (".rss", ".atom", ".xml", ".rdf", ".json", ".rss.gz", ".atom.gz", ".xml.gz")
    pages: str | None = Field(
        None,
        description="HTML files or WARC files where the page an item links to is looked up "
        "when the item carries only a summary",
    )


SourceConfig = _tagged(list(SOURCE_TYPES.values()))

# ------------------------------------------------------------------------------------ stages


class ExtractionConfig(Section):
    """Main text from HTML (WARC, html and feed sources)."""

    extractor: Literal["fast-with-fallback", "trafilatura", "resiliparse"] = Field(
        "fast-with-fallback",
        description="fast-with-fallback: resiliparse, and trafilatura for a page whose fast "
        "result looks wrong (too few words or mostly short lines)",
    )
    favor_precision: bool = Field(True, description="trafilatura: leave out doubtful text")
    timeout_seconds: float = Field(5.0, gt=0, description="per page; a slower page is refused")
    max_page_bytes: int = Field(10_000_000, gt=0, description="a larger page is refused")
    fallback_min_words: int = Field(50, ge=0)
    fallback_short_line_fraction: float = Field(
        0.4, ge=0, le=1, description="share of lines of 4 words or fewer"
    )


class LangIdConfig(Section):
    """Language identification of each document (fills `lang`; the score goes in meta)."""

    method: Literal["py3langid", "fasttext", "lingua", "none"] = Field(
        "py3langid",
        description="py3langid: 97 languages, ~0.3 ms a document; fasttext: lid.176 "
        "(compressed), 176 languages, ~0.15 ms; lingua: most accurate on short texts, 5-30x "
        "slower (see bench/results/ingest_langid.md)",
    )
    accuracy: Literal["low", "high"] = Field(
        "low", description="lingua only: low = trigrams only, ~0.1 GB for 75 languages"
    )
    languages: list[str] | None = Field(
        None, description="lingua only: ISO 639-1 codes to choose from; None: all it knows"
    )
    max_chars: int = Field(500, gt=0, description="how much of a document is looked at")


class IngestConfig(Section):
    max_docs_per_shard: int = Field(10_000, gt=0)
    extraction: ExtractionConfig = Field(default_factory=ExtractionConfig)
    langid: LangIdConfig = Field(default_factory=LangIdConfig)
    split_bytes: int = operational(
        64 * 1024 * 1024, gt=0, description="uncompressed JSONL files above this are split"
    )


class CleanConfig(Section):
    """Cleaning: repairs and line edits first, then every signal, then the rules decide.

    Defaults are FineWeb's filter set (language, Gopher quality and repetition, C4 without its
    terminal-punctuation line rule, FineWeb's own three rules) with the papers' thresholds. A
    threshold set to null switches its rule off. Rules are tried in the order of this class;
    the first one a document fails is its rejection reason.
    """

    # repairs and edits (they change the text; counts of changes go to the manifest)
    fix_unicode: bool = Field(True, description="ftfy: mojibake, HTML entities, C1 controls")
    unicode_form: Literal["NFC", "NFKC"] = "NFC"
    redact_pii: list[Literal["email", "ip", "phone"]] = Field(
        default_factory=lambda: ["email", "ip", "phone"],
        description="replace these with <EMAIL>, <IP_ADDRESS>, <PHONE_NUMBER>",
    )
    c4_remove_citations: bool = Field(True, description="drop [1], [edit], [citation needed]")
    c4_min_words_per_line: int = Field(3, ge=0, description="drop shorter lines; 0: keep all")
    c4_max_word_length: int | None = Field(1000, gt=0, description="drop lines with longer words")
    c4_remove_javascript_lines: bool = True
    c4_remove_policy_lines: bool = Field(True, description="cookie / terms-of-use / privacy lines")
    c4_keep_only_terminal_punctuation_lines: bool = Field(
        False, description="C4's rule; off as in FineWeb (it removes ~30% of tokens)"
    )
    # language (the `lang` column and meta lang score written by ingest; unknown passes)
    languages: list[str] = Field(
        default_factory=lambda: ["en"], description="keep only these languages; []: any"
    )
    min_language_score: float | None = Field(0.65, ge=0, le=1)
    # Gopher quality (MassiveText, Rae et al. 2021, appendix A)
    min_words: int | None = Field(50, ge=0)
    max_words: int | None = Field(100_000, gt=0)
    min_mean_word_length: float | None = Field(3.0, ge=0)
    max_mean_word_length: float | None = Field(10.0, gt=0)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0, description="'#' or ellipses per word")
    max_bullet_line_ratio: float | None = Field(0.9, ge=0, le=1)
    max_ellipsis_line_ratio: float | None = Field(0.3, ge=0, le=1)
    min_alpha_word_ratio: float | None = Field(0.8, ge=0, le=1)
    min_stop_words: int | None = Field(
        2, ge=0, description="of the, be, to, of, and, that, have, with; English documents only"
    )
    # Gopher repetition
    max_duplicate_line_fraction: float | None = Field(0.3, ge=0, le=1)
    max_duplicate_paragraph_fraction: float | None = Field(0.3, ge=0, le=1)
    max_duplicate_line_char_fraction: float | None = Field(0.2, ge=0, le=1)
    max_duplicate_paragraph_char_fraction: float | None = Field(0.2, ge=0, le=1)
    max_top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n (2-4) -> the most frequent n-gram's share of the characters",
    )
    max_duplicate_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n (5-10) -> share of characters in repeated n-grams",
    )
    # C4 document rules (on the text left after the line edits)
    c4_drop_lorem_ipsum: bool = True
    c4_drop_curly_bracket: bool = True
    c4_min_sentences: int | None = Field(5, ge=0)
    # FineWeb's own rules (Penedo et al. 2024, section 3.6)
    fineweb_min_line_punct_ratio: float | None = Field(0.12, ge=0, le=1)
    fineweb_max_short_line_ratio: float | None = Field(0.67, ge=0, le=1)
    fineweb_max_duplicate_line_char_ratio: float | None = Field(0.1, ge=0, le=1)
    fineweb_max_newline_word_ratio: float | None = Field(0.3, ge=0)
    max_docs_per_shard: int = operational(10_000, gt=0)

    @field_validator("max_top_ngram_char_fraction", "max_duplicate_ngram_char_fraction")
    @classmethod
    def _ngram_sizes(cls, value: dict[int, float], info: Any) -> dict[int, float]:
        allowed = range(2, 5) if info.field_name == "max_top_ngram_char_fraction" else range(5, 11)
        bad = sorted(set(value) - set(allowed))
        if bad:
            raise ValueError(f"n must be in {allowed.start}..{allowed.stop - 1}, not {bad}")
        return dict(sorted(value.items()))


class DedupConfig(Section):
    """Exact dedup (normalized-text hash), then near-dup MinHash LSH (FineWeb's defaults:
    word 5-grams, 14 bands x 8 rows, so pairs above ~0.75 Jaccard are caught), optionally
    repeated lines/paragraphs across documents, optionally against an earlier corpus."""

    method: Literal["exact", "minhash"] = Field(
        "minhash", description="exact: identical normalized texts only; minhash: also near-dups"
    )
    ngram_size: int = Field(5, ge=1, description="words per shingle")
    num_bands: int = Field(14, ge=1)
    rows_per_band: int = Field(8, ge=1)
    seed: int = Field(1, description="seed of the MinHash hash functions")
    repeated_spans: Literal["off", "lines", "paragraphs"] = Field(
        "off", description="also drop lines/paragraphs already seen in an earlier kept document"
    )
    span_min_doc_words: int = Field(
        50, ge=0, description="a document left with fewer words after span removal is dropped"
    )
    previous: str | None = Field(
        None,
        description="an earlier dedup output folder: drop documents it already holds (incremental)",
    )
    max_docs_per_shard: int = operational(10_000, gt=0)

    @field_validator("repeated_spans", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false


class DecontaminateConfig(Section):
    """Decontamination against the evaluation sets (a stage after dedup, off by default).

    Training documents that share a word n-gram (13 by default, as GPT-3 and OLMo) with an
    example of an evaluation set of this config (the files of `evaluate.tasks`, and the held-out
    examples of the fine-tuning and application tasks) are dropped, or the matching span is cut
    out with a margin; `report` only counts them. Words are normalized: lowercase, punctuation
    removed, split on whitespace.
    """

    enabled: bool = False
    ngram_size: int = Field(13, ge=3, le=64, description="words per n-gram")
    min_example_words: int = Field(
        8,
        ge=1,
        description="an eval example shorter than ngram_size is matched whole when it has at "
        "least this many words; shorter ones cannot be checked and are counted as such",
    )
    action: Literal["drop", "cut", "report"] = Field(
        "drop",
        description="drop: remove the document; cut: remove the matching spans and "
        "cut_margin_chars around them; report: keep everything, only count",
    )
    cut_margin_chars: int = Field(200, ge=0, description="cut: characters removed around a match")
    min_doc_words: int = Field(
        50, ge=0, description="cut: a document left with fewer words is dropped"
    )
    tasks: list[str] | None = Field(
        None,
        description="names of the evaluate/finetune tasks to check against; None: every task "
        "that reads a file",
    )
    max_docs_per_shard: int = operational(10_000, gt=0)


class QualityConfig(Section):
    """A quality classifier trained in the pipeline (DCLM's recipe: reference text against
    random web text), a `quality_score` for every document, and a keep rule (off by default).

    The classifier is a linear model over hashed word n-grams (fastText's features, without its
    low-rank embedding), trained on `positives` (a reference source) against documents sampled
    from this stage's input (`negative_sources`: only those sources). Or `classifier` reuses one.
    """

    enabled: bool = False
    positives: list[SourceConfig] = Field(
        default_factory=list,
        description="the reference text (sources, as in `sources`): Wikipedia, curated news, ...",
    )
    negative_sources: list[str] = Field(
        default_factory=list,
        description="source names of the input documents to sample negatives from; []: all",
    )
    classifier: str | None = Field(
        None,
        description="reuse a classifier instead of training one: a folder or .safetensors "
        "file written by this stage, or an MLflow URI (runs:/RUN_ID/output)",
    )
    max_examples: int = Field(20_000, gt=0, description="per class, for training and held out")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share held out to measure it")
    word_ngrams: int = Field(2, ge=1, le=3, description="word n-grams 1..this are features")
    hash_bits: int = Field(20, ge=10, le=24, description="2**hash_bits hashed features")
    regularization: float = Field(1.0, gt=0, description="inverse L2 strength (C)")
    max_chars: int = Field(10_000, gt=0, description="characters of a document looked at")
    seed: int = 1
    threshold: float | None = Field(
        None, ge=0, le=1, description="keep documents scoring at least this"
    )
    keep_fraction: float | None = Field(
        None, gt=0, le=1, description="keep this share of documents, the best scored"
    )
    max_docs_per_shard: int = operational(10_000, gt=0)

    @model_validator(mode="after")
    def _one_source_of_classifier(self) -> QualityConfig:
        if not self.enabled:
            return self
        if self.classifier is None and not self.positives:
            raise ValueError(
                "quality: give positives (a reference source to train on) or classifier "
                "(one to reuse)"
            )
        if self.classifier is not None and self.positives:
            raise ValueError("quality: give positives or classifier, not both")
        if self.threshold is not None and self.keep_fraction is not None:
            raise ValueError("quality: give threshold or keep_fraction, not both")
        return self


class TokenizerConfig(Section):
    """Byte-level BPE trained on the train documents, or a given tokenizer (`pretrained`)."""

    type: Literal["bpe", "char"] = Field(
        "bpe",
        description="bpe: byte-level BPE; char: one token per character (vocab_size caps it)",
    )
    vocab_size: int = Field(8192, ge=260, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    special_tokens: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS),
        description="end of text (document separator, BOS/EOS), padding, fine-tuning roles",
    )
    pretrained: str | None = Field(
        None,
        description="reuse this tokenizer instead of training: a tokenizer.json, a folder with "
        "one, or an MLflow URI (runs:/RUN/output, models:/NAME@ALIAS); vocab_size, "
        "min_frequency and special_tokens are then the given tokenizer's",
    )
    train_chars: int | None = added_later(
        None,
        ge=1,
        description="bpe: train on a sample of about this many characters of the train "
        "documents (whole documents, picked by a hash of their id, spread over the corpus), so "
        "the trainer's time and memory stop growing with the corpus; None: every train "
        "document (nanochat trains its tokenizer on 2e9 characters)",
    )
    batch_size: int = operational(1000, gt=0)

    @model_validator(mode="after")
    def _eot_first(self) -> TokenizerConfig:
        if not self.special_tokens or self.special_tokens[0] != EOT_TOKEN:
            raise ValueError("special_tokens must start with '<|endoftext|>'")
        if self.train_chars is not None and self.type != "bpe":
            raise ValueError("train_chars samples the documents of a bpe tokenizer (type: bpe)")
        return self


class MixtureConfig(Section):
    """Per-source weights or token budgets of the train split (OLMo / Dolma-style mixing).

    Sources are the documents' `source` names. A source is down-sampled by keeping a
    deterministic subset of its documents (ordered by a hash of their ids) and up-sampled by
    repeating all of them, then such a subset; the val split is never resampled.
    """

    weights: dict[str, float] | None = Field(
        None,
        description="source -> share of the train tokens (normalized; 0 leaves a source out); "
        "every source in the documents needs one",
    )
    total_tokens: int | None = Field(
        None, gt=0, description="with weights: train tokens in all; None: as many as there are"
    )
    tokens: dict[str, int] | None = Field(
        None, description="source -> train tokens (instead of weights); every source needs one"
    )

    @model_validator(mode="after")
    def _weights_or_tokens(self) -> MixtureConfig:
        if (self.weights is None) == (self.tokens is None):
            raise ValueError("shards.mixture: give weights (and optionally total_tokens) or tokens")
        if self.tokens is not None and self.total_tokens is not None:
            raise ValueError("shards.mixture: total_tokens goes with weights, not tokens")
        values = self.weights if self.weights is not None else self.tokens
        if any(v < 0 for v in values.values()) or not any(v > 0 for v in values.values()):
            raise ValueError("shards.mixture: values must be >= 0, and one of them > 0")
        return self


class ShardsConfig(Section):
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split: Literal["hash", "position"] = Field(
        "hash",
        description="hash: a document goes to val by a hash of its id; position: the last "
        "val_fraction of the token stream (documents in order) is val, as nanoGPT cuts one "
        "text file",
    )
    tokens_per_shard: int = Field(50_000_000, gt=0)
    encoder: Literal["auto", "tokenizers", "tiktoken"] = Field(
        "auto",
        description="auto: tiktoken when it expresses the tokenizer and agrees with tokenizers "
        "on a sample of documents, else tokenizers",
    )
    mixture: MixtureConfig | None = added_later(
        None, description="per-source weights or token budgets of the train split"
    )
    batch_size: int = operational(1000, gt=0)
    docs_per_unit: int = operational(5000, gt=0, description="documents per unit of work")

    @model_validator(mode="after")
    def _mixture_needs_hash_split(self) -> ShardsConfig:
        if self.mixture is not None and self.split != "hash":
            raise ValueError("shards.mixture needs split: hash (whole documents are sampled)")
        return self


class ModelConfig(Section):
    """The GPT's shape and blocks (pipeline/model/gpt.py: GPTConfig checks them, once)."""

    arch: Literal["gpt2", "llama"] = Field(
        "gpt2",
        description="a preset of the block fields: gpt2 = layernorm, learned positions, gelu "
        "MLP, biases; llama = rmsnorm, rope, swiglu MLP, no biases",
    )
    norm: Literal["layernorm", "rmsnorm"] | None = added_later(None, description="None: the arch's")
    position: Literal["learned", "rope"] | None = added_later(
        None, description="position encoding; None: the arch's"
    )
    mlp: Literal["gelu", "swiglu"] | None = added_later(None, description="None: the arch's")
    qk_norm: bool = added_later(
        False, description="RMSNorm on each head's queries and keys (OLMo 2, Gemma 3)"
    )
    n_layer: int = Field(4, gt=0)
    n_head: int = Field(4, gt=0)
    n_embd: int = Field(128, gt=0)
    block_size: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    bias: bool | None = Field(None, description="None: the arch's default (gpt2 yes, llama no)")
    tie_embeddings: bool = True
    mlp_hidden: int | None = Field(
        None, gt=0, description="MLP width; None: 4 x n_embd (gelu), 8/3 x n_embd (swiglu)"
    )
    rope_base: float = Field(10_000.0, gt=0, description="RoPE base (rope positions)")
    norm_eps: float = Field(1e-5, gt=0)
    init: Literal["gpt2", "zero_out"] = Field(
        "gpt2",
        description="gpt2: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer); "
        "zero_out: those projections start at zero",
    )

    @model_validator(mode="after")
    def _valid_shape(self) -> ModelConfig:
        from pipeline.model.config import GPTConfig  # the one validation of a model's shape

        GPTConfig.from_model_config(self, vocab_size=1)
        return self


LAUNCHERS = ("{python}", "torchrun", "srun", "mpirun", "mpiexec")
TRAINER_ARGS = ["-m", "pipeline.train", "{request}"]
ALLOW_ANY_LAUNCHER = "LLMPIPE_ALLOW_LAUNCHER"


def launcher_words(template: str) -> list[str]:
    """The words of a `train.launcher` template, when it may run.

    A config can come from anyone who can write a YAML file, a `--set` or a deployment's
    parameters; the launcher is the one field that names a program. Allowed: one of LAUNCHERS
    (a bare name, found on PATH) that ends with `-m pipeline.train {request}`. Any other command
    only where the machine running the pipeline sets LLMPIPE_ALLOW_LAUNCHER=1.
    """
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise ValueError(f"not a command line: {exc}") from None
    if os.environ.get(ALLOW_ANY_LAUNCHER) == "1":
        if not words:
            raise ValueError("an empty command")
        return words
    if not words or words[0] not in LAUNCHERS or words[-3:] != TRAINER_ARGS:
        raise ValueError(
            f"{template!r} is not an allowed launcher: it must start with one of "
            f"{', '.join(LAUNCHERS)} and end with `{' '.join(TRAINER_ARGS)}`; set "
            f"{ALLOW_ANY_LAUNCHER}=1 in the environment of the machine that runs the pipeline "
            "to allow any command (README: Trust model)"
        )
    return words


class TrainConfig(Section):
    seed: int = 1337
    max_steps: int = Field(300, gt=0)
    batch_size: int = Field(16, gt=0, description="sequences per device per micro-batch")
    grad_accum_steps: int = Field(1, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine",
        description="after warmup: cosine to min_lr at max_steps, or warmup-stable-decay "
        "(constant, then a decay to min_lr over the last decay_fraction of the steps)",
    )
    warmup_steps: int = Field(30, ge=0)
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps that decay")
    decay_shape: Literal["linear", "sqrt"] = Field(
        "linear", description="wsd: linear decay, or 1 - sqrt (as llm.c)"
    )
    tokens: int | None = added_later(
        None,
        gt=0,
        description="the budget in tokens instead of max_steps (an increment's size): the "
        "steps are tokens / (batch_size x grad_accum_steps x block_size x devices), rounded up",
    )
    continuation: Literal["continue", "restart"] = added_later(
        "continue",
        description="when pretraining starts from earlier weights (run.init_from): continue "
        "(carry the optimizer state over when the architecture matches; from min_lr back to "
        "continue_lr_fraction x learning_rate over continue_warmup_steps, then the schedule's "
        "decay) or restart (a fresh optimizer and the full warmup to learning_rate)",
    )
    continue_warmup_steps: int = added_later(
        0,
        ge=0,
        description="continuation: steps from min_lr up to the continuation peak (0: straight "
        "back to it; without an optimizer state to carry, at least warmup_steps)",
    )
    continue_lr_fraction: float = added_later(
        1.0,
        gt=0,
        le=1,
        description="continuation: its peak, as a fraction of learning_rate (1: the stable-phase "
        "rate of the first run; bench/nightly.py measured it against 0.5)",
    )
    weight_decay: float = Field(0.1, ge=0)
    decay_embeddings: bool = Field(
        True, description="weight decay on the embedding matrices too (nanoGPT: yes)"
    )
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0: no clipping")
    val_every_steps: int = Field(100, gt=0)
    val_batches: int = Field(20, gt=0)
    checkpoint_every_steps: int = Field(100, gt=0)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = Field(
        "32-true", description="auto: bf16-mixed on a GPU that supports it, else 32-true"
    )
    final_weights: Literal["last", "best"] = added_later(
        "last",
        description="what final/ holds (evaluate and register take it): the last step's weights, "
        "or those of the lowest val_loss (early stopping, as nanoGPT keeps its best checkpoint)",
    )
    compile: bool = False
    compile_mode: Literal["default", "max-autotune", "max-autotune-no-cudagraphs"] = operational(
        "default",
        description="torch.compile mode: max-autotune searches matmul kernels (minutes of "
        "compile on a GPU for a few % more speed; bench/gpu_check.py measures it)",
    )
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = Field("auto", description="auto, ddp, fsdp, or any Lightning strategy name")
    num_nodes: int = Field(1, gt=0)
    max_bad_steps: int = operational(
        5, gt=0, description="stop after this many non-finite steps in a row (each is skipped)"
    )
    keep_last_checkpoints: int = operational(2, gt=0)
    keep_best_checkpoint: bool = operational(True, description="keep best/ (lowest val_loss)")
    log_every_steps: int = operational(10, gt=0)
    progress_bar: bool = operational(True)
    sample_prompts: list[str] = operational(
        ["\n"],
        description="prompts sampled at each validation, logged as an MLflow artifact",
    )
    sample_tokens: int = operational(64, ge=0, description="0: no samples during training")
    peak_flops: float | None = operational(
        None, gt=0, description="per-device peak FLOP/s for MFU; None: from the GPU's name"
    )
    launcher: str | None = operational(
        None,
        description="command that starts training, with {python} and {request}: e.g. "
        "'torchrun --nproc-per-node=8 -m pipeline.train {request}' or "
        "'srun {python} -u -m pipeline.train {request}'; None: {python} -u -m pipeline.train "
        "{request}. Only these launchers unless $LLMPIPE_ALLOW_LAUNCHER=1 (README: Trust model)",
    )

    @field_validator("launcher")
    @classmethod
    def _allowed_launcher(cls, launcher: str | None) -> str | None:
        if launcher is not None:
            launcher_words(launcher)
        return launcher

    @model_validator(mode="after")
    def _fsdp_needs_gpus(self) -> TrainConfig:
        if self.strategy == "fsdp" and self.accelerator == "cpu":
            raise ValueError("strategy fsdp needs GPUs (Lightning has no FSDP on the CPU); use ddp")
        if self.final_weights == "best" and not self.keep_best_checkpoint:
            raise ValueError("final_weights: best needs keep_best_checkpoint: true")
        return self


# -------------------------------------------------------------------------- evaluation tasks

_TASK_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"


class EvalTask(Section):
    """An evaluation task's config; `default_name` prefixes its metrics unless `name` is set."""

    default_name: ClassVar[str]
    name: str | None = Field(
        None, pattern=_TASK_NAME, description="prefix of the task's metrics; defaults per type"
    )


class FileEvalTask(EvalTask):
    """A task that reads local files; a folder `path` holds files of the `folder_kind` source
    type (its `folder_suffixes`)."""

    folder_kind: ClassVar[str] = "text"

    path: str = Field(description="a local file; relative paths are from the config's folder")
    missing: Literal["error", "skip"] = Field(
        "error",
        description="when the file is absent: a config error, or skip the task with a note",
    )
    limit: int | None = Field(None, gt=0, description="score only the first N examples")


@register_task
class HeldoutTask(EvalTask):
    """Loss, perplexity and bits per byte on the pipeline's val token shards."""

    type: Literal["heldout"]
    default_name = "val"


@register_task
class PerplexityTask(FileEvalTask):
    """Perplexity and bits per byte of text files: .txt (one document per file) or .jsonl
    (one document per record's `text_field`), optionally gzipped; a folder or glob is fine."""

    type: Literal["perplexity"]
    default_name = "text"
    text_field: str = "text"


@register_task
class WikiText2Task(FileEvalTask):
    """WikiText-2 raw test (`wiki.test.raw[.gz]`), scored per article as lm-eval's `wikitext`."""

    type: Literal["wikitext2"]
    default_name = "wikitext2"


@register_task
class HellaSwagTask(FileEvalTask):
    """HellaSwag jsonl (ctx or ctx_a/ctx_b, activity_label, endings, label)."""

    type: Literal["hellaswag"]
    default_name = "hellaswag"
    folder_kind = "jsonl"


@register_task
class LambadaTask(FileEvalTask):
    """LAMBADA, OpenAI's version (jsonl with `text`): the last word of each passage."""

    type: Literal["lambada"]
    default_name = "lambada"
    folder_kind = "jsonl"


@register_task
class MultipleChoiceTask(FileEvalTask):
    """Any multiple-choice jsonl: one record per question with a context, choices, a label."""

    type: Literal["multiple_choice"]
    default_name = "mc"
    folder_kind = "jsonl"
    context_field: str = "context"
    choices_field: str = "choices"
    label_field: str = Field("label", description="index of the right choice (0-based)")
    delimiter: str = Field(" ", description="put between the context and each choice")


@register_task
class GenerationsTask(EvalTask):
    """Sample continuations of `evaluate.prompts`, kept as a table."""

    type: Literal["generations"]
    default_name = "generations"


# ------------------------------------------------------------- application tasks (fine-tuning)


class ApplicationTask(FileEvalTask):
    """A task made of (prompt, response) examples read from local files.

    The same entry serves fine-tuning (`finetune.tasks`: the train part of the examples) and
    evaluation (`evaluate.tasks`: the held-out part), so a config usually writes it once with a
    YAML anchor. Examples are split by a hash of their text: `eval_fraction` of them are held
    out, the same ones in every run; with `eval_path` the held-out examples come from that file.

    The class says how a record becomes an example: `default_prompt` (a str.format template
    over `prompt_fields`; a response template may also use `{answer}`). The built-in types'
    records are read by `pipeline.finetune.examples` and scored by `pipeline.evaluate`, which
    register their code against these classes; a new type instead defines `example_fields`
    and `score` (see ARCHITECTURE.md, "Add an application task").
    """

    default_prompt: ClassVar[str]
    prompt_fields: ClassVar[tuple[str, ...]]

    def example_fields(self, record: dict[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
        """One record's prompt fields and its reference answers (the first is the response
        fine-tuning teaches); raise `pipeline.finetune.examples.BadRecord` to refuse it."""
        raise NotImplementedError(f"{type(self).__name__} does not define example_fields")

    def score(self, prediction: str, answers: tuple[str, ...]) -> dict[str, float]:
        """One generated prediction's metrics against the example's reference answers; the
        task's metrics are their means."""
        raise NotImplementedError(f"{type(self).__name__} does not define score")

    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of the examples held out for evaluation (by hash)"
    )
    eval_path: str | None = Field(
        None, description="a separate file of evaluation examples (eval_fraction then unused)"
    )
    prompt_template: str | None = Field(
        None, description="str.format template of the prompt; None: the task type's default"
    )
    response_template: str | None = Field(
        None, description="str.format template of the response; None: ' {answer}'"
    )
    weight: float = Field(1.0, gt=0, description="fine-tuning: sampling weight among the tasks")
    max_new_tokens: int = Field(32, gt=0, description="evaluation: greedy generation length")


@register_task
class QATask(ApplicationTask):
    """Extractive question answering: SQuAD-format JSON (or JSONL with context, question and
    answers); SQuAD 2.0's unanswerable questions get `no_answer` as their response."""

    type: Literal["qa"]
    default_name = "qa"
    default_prompt = "{context}\nQuestion: {question}\nAnswer:"
    prompt_fields = ("context", "question")
    no_answer: str = Field("no answer", min_length=1)


@register_task
class SummarizationTask(ApplicationTask):
    """(article, summary) pairs from JSONL or CSV."""

    type: Literal["summarization"]
    default_name = "summarization"
    default_prompt = "{article}\nTL;DR:"
    prompt_fields = ("article",)
    article_field: str = "article"
    summary_field: str = "summary"


@register_task
class TranslationTask(ApplicationTask):
    """Parallel text: JSONL/CSV/TSV with one field per language (named by `source_lang` and
    `target_lang`), or `path` (source side) and `target_path` with one sentence per line."""

    type: Literal["translation"]
    default_name = "translation"
    default_prompt = "{source_language}: {source}\n{target_language}:"
    prompt_fields = (
        "source",
        "source_lang",
        "target_lang",
        "source_language",
        "target_language",
    )
    source_lang: str = Field(min_length=1, description="language code, also the source field")
    target_lang: str = Field(min_length=1, description="language code, also the target field")
    target_path: str | None = Field(
        None, description="plain-text target side, aligned line by line with `path`"
    )


@register_task
class ClassificationTask(ApplicationTask):
    """(text, label) pairs; each label becomes an answer word, and evaluation scores every
    answer word by log-likelihood (no free generation)."""

    type: Literal["classification"]
    default_name = "classification"
    default_prompt = "{text}\nAnswer:"
    prompt_fields = ("text",)
    text_field: str = "text"
    label_field: str = "label"
    labels: dict[str, str] = Field(
        min_length=2, description="label value (as written in the data) -> its answer word"
    )


def _application_types() -> list[type[BaseModel]]:
    return [c for c in TASK_TYPES.values() if issubclass(c, ApplicationTask)]


ApplicationTaskConfig = _tagged(_application_types())
EvalTaskConfig = _tagged(list(TASK_TYPES.values()))


def task_name(task: Any) -> str:
    return task.name or type(task).default_name


def unique_task_names(tasks: list[Any]) -> list[Any]:
    """Metrics are named after their task: two tasks of one name would overwrite each other."""
    names = [task_name(t) for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"task names must be unique; repeated: {', '.join(repeated)}")
    return tasks


class EvaluateConfig(Section):
    tasks: list[EvalTaskConfig] = Field(
        default_factory=lambda: [HeldoutTask(type="heldout"), GenerationsTask(type="generations")],
        description="what to evaluate, in order; metrics are named <task name>_<metric>",
    )
    limit: int | None = Field(
        None, gt=0, description="cap on examples for every file task (with each task's limit)"
    )
    val_batches: int | None = Field(None, gt=0, description="None = the whole val split")
    batch_size: int = Field(16, gt=0)
    prompts: list[str] = Field(default_factory=lambda: ["The", "In 2005 ,", "He was born in"])
    max_new_tokens: int = Field(40, gt=0)
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(50, gt=0)
    repetition_penalty: float = added_later(
        1.0, gt=0, description="> 1 makes tokens already in the text less likely (1: off)"
    )
    seed: int = 1234
    compare_base: bool = Field(
        True,
        description="after fine-tuning, also score the application tasks (qa, summarization, "
        "translation, classification) on the model it started from: base_<task>_<metric>",
    )
    device: str = operational("auto", description="auto: cuda when available, else cpu")

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[Any]) -> list[Any]:
        return unique_task_names(tasks)


def _finetune_train_defaults() -> TrainConfig:
    return TrainConfig(
        max_steps=200,
        learning_rate=3e-4,
        min_lr=3e-5,
        warmup_steps=20,
        weight_decay=0.0,
        val_every_steps=50,
        val_batches=10,
        checkpoint_every_steps=50,
        sample_tokens=0,
    )


class LoraConfig(Section):
    """Low-rank adapters (LoRA) on the attention and MLP projections; only they train, and they
    are merged into the weights when the fine-tune is saved."""

    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0, description="scale = alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(
        default_factory=lambda: [
            "attn.c_attn",
            "attn.c_proj",
            "mlp.c_fc",
            "mlp.c_proj",
            "mlp.c_gate",
        ],
        min_length=1,
        description="projection names (suffixes of module names) that get adapters",
    )
    train_embeddings: bool = Field(
        False,
        description="also train the embeddings (the tied output head too): a small or briefly "
        "pretrained model often cannot learn new answer words through adapters alone",
    )


class FinetuneConfig(Section):
    """Supervised fine-tuning on (prompt, response) pairs, loss on the response tokens only.

    No tasks: no fine-tuning stage (evaluate and register take the pretrained model).
    """

    tasks: list[ApplicationTaskConfig] = Field(
        default_factory=list, description="the tasks to fine-tune on, mixed by their weights"
    )
    init_from: str | None = Field(
        None,
        description="None: the pipeline's pretrained model; else a model folder (ours, or a "
        "Hugging Face GPT-2-format folder), or an MLflow URI (models:/NAME@champion)",
    )
    packing: bool = Field(
        True, description="several examples per row (attention kept within each); else one"
    )
    lora: LoraConfig | None = Field(None, description="None: full fine-tuning")
    train: TrainConfig = Field(default_factory=_finetune_train_defaults)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[Any]) -> list[Any]:
        return unique_task_names(tasks)

    @property
    def enabled(self) -> bool:
        return bool(self.tasks)


class RegisterConfig(Section):
    model_name: str = Field("llmpipe-gpt", min_length=1)
    metric: str = Field("val_bpb", description="the eval metric that decides promotion")
    mode: Literal["min", "max"] = Field("min", description="whether lower or higher wins")
    min_improvement: float = Field(
        0.0, ge=0, description="how much the challenger must beat the champion by to take over"
    )
    guard_metric: str | None = added_later(
        None,
        description="a second eval metric the challenger must not lose on (e.g. val_bpb_first "
        "while metric is val_bpb_new: better on new news, not worse on old)",
    )
    guard_tolerance: float = added_later(
        0.0, ge=0, description="how much worse than the champion guard_metric may be, relative"
    )


class ExecutionConfig(Section):
    """Where the data stages' units of work run; none of it changes their output."""

    workers: int = operational(1, ge=1, description="worker processes for data stages")
    runner: Literal["local", "dask"] = operational("local")
    dask_address: str | None = operational(None, description="an existing Dask scheduler")


class SweepConfig(Section):
    """What `llmpipe sweep CONFIG` compares when its command line gives no --grid or --variant
    (pipeline/sweep.py). No stage reads it: it changes no output and no config hash."""

    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="section.key -> the values to try; every combination is a variant",
    )
    variants: dict[str, list[str]] = Field(
        default_factory=dict,
        description="a variant's name -> its section.key=value overrides (a grid applies to each)",
    )
    seeds: list[int] = Field(
        default_factory=list, description="train each variant once per seed (train.seed)"
    )
    metric: str | None = Field(
        None, description="the metric to rank by (default: <task>_bpb of the reference task)"
    )
    mode: Literal["min", "max"] | None = Field(None, description="better is lower or higher")


class RunConfig(Section):
    """Full runs, or incremental ones (a nightly news run) that build on the earlier runs of the
    same config in the same work dir (pipeline/incremental.py).

    `mode: incremental` is all a config sets: at the start of a run the orchestrator fills the
    other fields from the work dir's record of earlier increments (the first increment runs in
    full). They can also be set by hand; each is fingerprinted by the stage it changes.
    """

    mode: Literal["full", "incremental"] = operational(
        "full", description="incremental: only new documents, fixed tokenizer, from @champion"
    )
    seen_before: str | None = Field(
        None, description="folder of keys (ids, URLs, text hashes) ingested before: skipped"
    )
    tokenizer_from: str | None = Field(
        None, description="a tokenizer output folder to keep instead of training a new one"
    )
    heldout_from: str | None = Field(
        None, description="a shards output folder whose val split evaluation keeps using"
    )
    init_from: str | None = Field(
        None, description="pretraining starts from these weights (models:/NAME/VERSION or a folder)"
    )
    init_state_from: str | None = added_later(
        None,
        description="the resumable checkpoint (its trainer_state.ckpt) of the run that made "
        "init_from: its optimizer state is carried over (train.continuation: continue)",
    )
    replay_from: list[str] = added_later(
        default_factory=list,
        description="shards output folders of earlier increments: their own train documents "
        "are replayed beside the new ones",
    )
    replay_fraction: float = added_later(
        0.5,
        ge=0,
        lt=1,
        description="share of an increment's train tokens replayed from replay_from "
        "(sampled deterministically); 0: the new documents only",
    )


class TrackingConfig(Section):
    experiment: str = operational("llmpipe")
    mlflow_tracking_uri: str | None = operational(
        None, description="None: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db"
    )


# `register` is the stage's name; pydantic only warns that it shadows ABCMeta.register.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class PipelineConfig(Section):
    name: str = Field(
        "llmpipe",
        description="the pipeline's name: letters, digits, '.', '_', '-' (it names folders "
        "under the work dir, MLflow runs and Prefect flow runs)",
    )
    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="what to pretrain on; none needed when fine-tuning starts from finetune.init_from",
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = added_later(default_factory=DecontaminateConfig)
    quality: QualityConfig = added_later(default_factory=QualityConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    register: RegisterConfig = Field(default_factory=RegisterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    sweep: SweepConfig = Field(  # read by `llmpipe sweep` only: in no fingerprint or hash
        default_factory=SweepConfig, json_schema_extra={"omit_default": True, "operational": True}
    )
    workdir: str = operational("work", description="where stage outputs live")
    base_dir: str = operational(".", description="relative source paths resolve from here")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _PLAIN_NAME.match(name):
            raise ValueError(
                "must be a plain name of letters, digits, '.', '_' and '-' starting with a "
                "letter or digit (it names a folder under the work dir)"
            )
        return name

    @property
    def pretrains(self) -> bool:
        """Whether the pipeline pretrains (and runs the data stages before it): always, unless
        it fine-tunes a model given in finetune.init_from."""
        return not (self.finetune.enabled and self.finetune.init_from)

    @model_validator(mode="after")
    def _sources_when_pretraining(self) -> PipelineConfig:
        if not self.sources and self.pretrains:
            raise ValueError(
                "sources: at least one source is needed to pretrain (or fine-tune a model "
                "given in finetune.init_from, with finetune.tasks)"
            )
        return self


# ----------------------------------------------------------------------------------- loading


def fingerprint_fields(section: BaseModel) -> dict[str, Any]:
    """The fields of a section that change its output (operational ones left out)."""
    out = {}
    for name, field in type(section).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        value = getattr(section, name)
        if extra.get("operational") or _at_omitted_default(field, value):
            continue
        # a nested section (finetune.train) drops its operational fields too
        out[name] = fingerprint_fields(value) if isinstance(value, BaseModel) else value
    return out


def source_description(source: BaseModel) -> dict[str, Any]:
    """A source's fields that change what is read, as JSON (for fingerprints and hashes)."""
    kept = fingerprint_fields(source)
    return {k: v for k, v in source.model_dump(mode="json").items() if k in kept}


def config_hash(config: PipelineConfig) -> str:
    """A short hash of everything in the config that changes an output (operational fields,
    such as worker counts and paths, left out): equal hashes, same recipe."""
    payload: dict[str, Any] = {"sources": [source_description(s) for s in config.sources]}
    for name, field in type(config).model_fields.items():
        section = getattr(config, name)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("operational"):
            continue  # a section no stage reads (sweep)
        if isinstance(section, BaseModel) and not _at_omitted_default(field, section):
            payload[name] = fingerprint_fields(section)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _unwrap(annotation: Any) -> Any:
    """X from `Annotated[X, ...]` and from `X | None`."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _section_at(loc: tuple) -> type[BaseModel] | None:
    """The section a config location points at (pydantic puts a union's tag in locations:
    sources.0.jsonl is a JsonlSource)."""
    node: Any = PipelineConfig
    for part in loc:
        node = _unwrap(node)
        if typing.get_origin(node) in (typing.Union, types.UnionType):  # a tagged union
            tagged = [
                m
                for m in typing.get_args(node)
                if isinstance(m, type)
                and issubclass(m, BaseModel)
                and "type" in m.model_fields
                and part in typing.get_args(m.model_fields["type"].annotation)
            ]
            if tagged:
                node = tagged[0]
                continue
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = field.annotation if field is not None else None
        elif typing.get_origin(node) in (list, tuple):
            node = typing.get_args(node)[0]
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        else:
            node = None
    node = _unwrap(node)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _unknown_key(loc: tuple) -> str:
    """`clean.min_wrods: unknown key; did you mean `min_words`?` (or the keys it may be)."""
    section = _section_at(loc[:-1])
    key = str(loc[-1])
    name = ".".join(str(p) for p in loc)
    if section is None:
        return f"{name}: unknown key"
    keys = sorted(section.model_fields)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return f"{name}: unknown key; did you mean `{close[0]}`?"
    return f"{name}: unknown key (expected one of: {', '.join(keys)})"


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    where = ".".join(str(p) for p in loc)
    if kind == "missing":
        return f"{where}: required key is missing"
    what = "task" if "tasks" in loc else "source"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        return (
            f"{where}.type: unknown {what} type {error['input'].get('type')!r} "
            f"(expected {expected})"
        )
    if kind == "union_tag_not_found":
        return f"{where}: a {what} needs a 'type' key"
    if kind == "value_error" and not loc:  # a whole-config rule: its message names the keys
        return str(error["msg"]).removeprefix("Value error, ")
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message} (got {error.get('input')!r})"


def validate_config(raw: dict[str, Any]) -> PipelineConfig:
    """Validate a config dict; raise ConfigError naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(raw).__name__}")
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = ["  - " + _describe(error) for error in exc.errors()]
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None
    missing = missing_eval_files(config)
    if missing:
        raise ConfigError("invalid config:\n" + "\n".join("  - " + m for m in missing))
    return config


def missing_eval_files(config: PipelineConfig) -> list[str]:
    """One line per evaluation task whose file is absent and not marked `missing: skip`."""
    lines = []
    tasks = [("evaluate", n, t) for n, t in enumerate(config.evaluate.tasks)]
    tasks += [("finetune", n, t) for n, t in enumerate(config.finetune.tasks)]
    for section, number, task in tasks:
        if getattr(task, "missing", "error") == "skip" and section == "evaluate":
            continue
        for key in ("path", "eval_path", "target_path"):
            path = getattr(task, key, None)
            if path is None:
                continue
            resolved = resolve_path(config, path)
            if not glob.glob(resolved) and not Path(resolved).exists():
                hint = " (set `missing: skip` to skip the task when the file is absent)"
                lines.append(
                    f"{section}.tasks.{number}.{key}: no such file for task "
                    f"{task_name(task)!r}: {resolved}" + (hint if section == "evaluate" else "")
                )
    return lines


def _override_child(node: Any, part: str, item: str, create: bool) -> Any:
    """The section (or list entry) `part` of `node`, for the override `item`."""
    if isinstance(node, list):
        try:
            index = int(part)
        except ValueError:
            raise ConfigError(f"--set {item!r}: {part!r} is not a list index") from None
        if not -len(node) <= index < len(node):
            count = len(node)
            raise ConfigError(
                f"--set {item!r}: no entry {index} in a list of {count} (indexes 0..{count - 1})"
                if count
                else f"--set {item!r}: no entry {index} in an empty list"
            )
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {item!r}: {part!r} is inside a value, not a section")
    if create:
        return node.setdefault(part, {})
    return node.get(part)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML) to a config dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        parts = key.split(".")
        node = raw
        for part in parts[:-1]:
            node = _override_child(node, part, item, create=True)
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        leaf = parts[-1]
        if isinstance(node, list):
            _override_child(node, leaf, item, create=False)  # the entry must exist
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
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML config (not UTF-8 text)") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config must be a mapping of sections")
    raw = _unshared(raw)
    raw.setdefault("base_dir", str(path.resolve().parent))
    return validate_config(apply_overrides(raw, overrides or []))


def _unshared(node: Any) -> Any:
    """The YAML tree with every mapping and list its own copy: a YAML alias (a task written once
    with `&anchor`, used in finetune.tasks and evaluate.tasks) is loaded as one shared object,
    and `--set finetune.tasks.0.limit=...` must not change the evaluation task too."""
    if isinstance(node, dict):
        return {key: _unshared(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshared(value) for value in node]
    return node


def resolve_path(config: PipelineConfig, path: str) -> str:
    """A source path as given, or joined to the config's folder when relative."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(Path(config.base_dir) / path)


def _rebuild_schema() -> None:
    """Rebuild the `sources`/`tasks` unions from the registries, and the models holding them
    (inner ones first: a model embeds the validators of the sections it holds)."""
    global SourceConfig, EvalTaskConfig, ApplicationTaskConfig
    SourceConfig = _tagged(list(SOURCE_TYPES.values()))
    EvalTaskConfig = _tagged(list(TASK_TYPES.values()))
    ApplicationTaskConfig = _tagged(_application_types())
    for model, field, union in (
        (QualityConfig, "positives", SourceConfig),
        (EvaluateConfig, "tasks", EvalTaskConfig),
        (FinetuneConfig, "tasks", ApplicationTaskConfig),
        (PipelineConfig, "sources", SourceConfig),
    ):
        model.model_fields[field].annotation = list[union]
        model.model_rebuild(force=True)
