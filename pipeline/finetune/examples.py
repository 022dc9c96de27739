"""Application tasks as (prompt, response) examples: local data files in, `Example`s out.

In: one application task config (`qa`, `summarization`, `translation`, `classification` from
`pipeline.config`), the folder its relative paths resolve from, and a quarantine. Out: the
task's examples, in file order, each with its formatted prompt (what the model is conditioned
on), its formatted response (what fine-tuning puts the loss on), the raw reference answers
that evaluation scores against, and for classification every label's formatted response.

What each task reads (a file, a folder or a glob; `.gz` is read transparently):
- qa: SQuAD JSON (`{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`), or
  JSONL/CSV records with `context`, `question` and `answers` (a list, one string, or the
  Hugging Face `{"text": [...]}` form). A SQuAD 2.0 unanswerable question (`is_impossible`,
  or no answers) gets the task's `no_answer` as its response and only reference.
- summarization: JSONL/CSV with `article_field` and `summary_field`.
- translation: JSONL/CSV/TSV with one field per language (`source_lang`, `target_lang`), or
  plain-text `path` (source side) and `target_path` aligned line by line.
- classification: JSONL/CSV with `text_field` and `label_field`; a label value matches a key of
  `labels` as a string (`0` and `"0"` both match `"0"`).

How a record of each type becomes an example is registered against the task's config class
(`@makes_examples(QATask)`, ...); a task class of its own that defines `example_fields` uses the
one registered for `ApplicationTask`, which calls it.

Split: with `eval_path`, train = the examples of `path` and eval = those of `eval_path`;
otherwise an example is held out (eval) when the hash of its text falls below `eval_fraction`,
so the same examples are held out in every run, whatever order or files they come in.
A record that cannot be used is quarantined with its reason and skipped; a missing file raises
FileNotFoundError; a template naming an unknown field raises ConfigError before any reading.
"""

from __future__ import annotations

import csv
import hashlib
import json
import string
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from pipeline.config import (
    ApplicationTask,
    ClassificationTask,
    ConfigError,
    QATask,
    SummarizationTask,
    TranslationTask,
    task_name,
)
from pipeline.ingest.files import (
    decoded_lines,
    file_name,
    jsonl_records,
    match_source_files,
    open_binary,
    resolve_source_path,
)
from pipeline.quarantine import Quarantine


@dataclass(frozen=True)
class Example:
    task: str  # task_name(task)
    locator: str  # "file:line", "file:row", "file:article/paragraph/qa-id"
    prompt: str  # formatted prompt (text the model is conditioned on)
    response: str  # formatted response (the loss is on it), no end-of-text token
    answers: tuple[str, ...]  # raw references for scoring (QA golds, summary, target, label word)
    choices: tuple[str, ...] = ()  # classification: every label's formatted response
    label: int | None = None  # classification: index of the right one in choices


DEFAULT_RESPONSE = " {answer}"


def response_fields(task: Any) -> tuple[str, ...]:
    """A response template may use the answer and every prompt field."""
    return ("answer", *task.prompt_fields)


# English names of common language codes (ISO 639-1, and FLORES-200's ISO 639-3 + script).
LANGUAGE_NAMES = {
    "en": "English", "eng": "English", "de": "German", "deu": "German", "fr": "French",
    "fra": "French", "es": "Spanish", "spa": "Spanish", "it": "Italian", "ita": "Italian",
    "pt": "Portuguese", "por": "Portuguese", "nl": "Dutch", "nld": "Dutch", "pl": "Polish",
    "pol": "Polish", "cs": "Czech", "ces": "Czech", "ru": "Russian", "rus": "Russian",
    "uk": "Ukrainian", "ukr": "Ukrainian", "tr": "Turkish", "tur": "Turkish", "ar": "Arabic",
    "arb": "Arabic", "he": "Hebrew", "heb": "Hebrew", "hi": "Hindi", "hin": "Hindi",
    "bn": "Bengali", "ben": "Bengali", "zh": "Chinese", "zho": "Chinese", "ja": "Japanese",
    "jpn": "Japanese", "ko": "Korean", "kor": "Korean", "vi": "Vietnamese", "vie": "Vietnamese",
    "id": "Indonesian", "ind": "Indonesian", "sw": "Swahili", "swh": "Swahili", "el": "Greek",
    "ell": "Greek", "fi": "Finnish", "fin": "Finnish", "sv": "Swedish", "swe": "Swedish",
    "da": "Danish", "dan": "Danish", "no": "Norwegian", "nb": "Norwegian", "ro": "Romanian",
    "ron": "Romanian", "hu": "Hungarian", "hun": "Hungarian", "et": "Estonian",
    "est": "Estonian", "lv": "Latvian", "lt": "Lithuanian", "bg": "Bulgarian", "ca": "Catalan",
}  # fmt: skip


def language_name(code: str) -> str:
    """`de` / `deu_Latn` / `de-AT` -> "German"; an unknown code is returned as it is."""
    key = code.strip().lower()
    for candidate in (key, key.replace("-", "_").split("_")[0]):
        if candidate in LANGUAGE_NAMES:
            return LANGUAGE_NAMES[candidate]
    return code


# ------------------------------------------------------------------------------ templates


def _template_fields(template: str) -> list[str]:
    """The top-level field names a str.format template uses ("a" for "{a.b}" / "{a[0]}")."""
    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            names.append(field.split(".", 1)[0].split("[", 1)[0])
    return names


def templates(task: Any) -> tuple[str, str]:
    """The task's (prompt, response) templates; ConfigError naming the task and the field when
    one names a field the task does not have (or is not a valid format string)."""
    name = task_name(task)
    prompt = task.prompt_template if task.prompt_template is not None else task.default_prompt
    response = task.response_template if task.response_template is not None else DEFAULT_RESPONSE
    for key, template, allowed in (
        ("prompt_template", prompt, task.prompt_fields),
        ("response_template", response, response_fields(task)),
    ):
        try:
            used = _template_fields(template)
        except ValueError as exc:
            raise ConfigError(f"task {name!r}: {key} {template!r} is not valid: {exc}") from exc
        for field in used:
            if field not in allowed:
                shown = f"{{{field}}}" if field else "a positional {}"
                raise ConfigError(
                    f"task {name!r}: {key} uses {shown}, which a {task.type} task does not have "
                    f"(fields: {', '.join(allowed)})"
                )
        try:  # what parsing does not see: a nested field in a format spec, a bad spec
            template.format(**dict.fromkeys(allowed, "x"))
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ConfigError(f"task {name!r}: {key} {template!r} is not valid: {exc!r}") from exc
    return prompt, response


# ---------------------------------------------------------------------------------- files


def named_input_files(task: Any, base_dir: str | Path) -> list[tuple[str, Any]]:
    """(display name, file) of every file the task reads: path, eval_path, target_path.
    FileNotFoundError naming the path when one matches no file."""
    out = []
    for key in ("path", "eval_path", "target_path"):
        path = getattr(task, key, None)
        if path is not None:
            out.extend(_match(path, base_dir))
    return out


def task_input_files(task: Any, base_dir: str | Path) -> list[Path]:
    """Every file the task reads (for fingerprints); FileNotFoundError when one is absent."""
    return [file for _, file in named_input_files(task, base_dir)]


FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",
    ".text": "text",
}


def _format(file: Any) -> str | None:
    name = file_name(file).lower().removesuffix(".gz")
    return next((kind for suffix, kind in FORMATS.items() if name.endswith(suffix)), None)


def _match(path: str, base_dir: str | Path) -> list[tuple[str, Any]]:
    """The files a path names (a file, a glob, or a folder's json/jsonl/csv/tsv files), sorted
    by display name; FileNotFoundError naming the path when there are none."""
    found: dict[str, Any] = {}
    problem = None
    folder = Path(resolve_source_path(path, base_dir)).is_dir()
    # A file or a glob matches the same whatever the kind; a folder's files depend on it.
    for kind in ("jsonl", "csv", "hf") if folder else ("jsonl",):
        matched = match_source_files(kind, path, base_dir)
        if matched.problem:
            problem = matched
            continue
        for name, file in zip(matched.names, matched.files, strict=True):
            if not folder or _format(file) is not None:  # no parquet/arrow from "hf"
                found[name] = file
    if not found:
        detail = f"{problem.detail} ({problem.resolved})" if problem else "no readable files"
        raise FileNotFoundError(f"{path}: {detail}")
    return sorted(found.items())


@contextmanager
def _csv_field_limit() -> Iterator[None]:
    # The csv module refuses fields over 128 KiB by default; a long article is larger.
    previous = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _table_records(
    display: str, file: Any, delimiter: str, name: str, quarantine: Quarantine
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(display:row, record) for each data row after the header row of a CSV/TSV file."""
    with _csv_field_limit(), open_binary(file) as handle:
        reader = csv.reader((line for _, line, _ in decoded_lines(handle)), delimiter=delimiter)
        header: list[str] | None = None
        row_number = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row_number += 1
                locator = f"{display}:{row_number}"
                quarantine.add("malformed_csv_row", source=name, locator=locator, detail=str(exc))
                continue
            if header is None:
                header = row
                continue
            if not row:
                continue
            row_number += 1
            locator = f"{display}:{row_number}"
            if len(row) != len(header):
                quarantine.add(
                    "malformed_csv_row",
                    source=name,
                    locator=locator,
                    detail=f"{len(row)} fields where the header has {len(header)}",
                    record=delimiter.join(row),
                )
                continue
            yield locator, dict(zip(header, row, strict=True))


def _json_lines(
    display: str, file: Any, name: str, quarantine: Quarantine
) -> Iterator[tuple[str, dict[str, Any]]]:
    return jsonl_records([(display, file)], name, quarantine)


def _whole_json(display: str, file: Any, name: str, quarantine: Quarantine) -> Any:
    with open_binary(file) as handle:
        raw = handle.read().decode("utf-8", errors="replace")
    try:
        return json.loads(raw)
    except ValueError as exc:
        quarantine.add("invalid_json", source=name, locator=display, detail=str(exc), record=raw)
        return None


def _records(
    task: Any, path: str, base_dir: str | Path, quarantine: Quarantine
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(locator, record) for every record of the files a path names, in file order.

    A SQuAD JSON file gives one flat record per question ({"context", "question", "answers",
    "is_impossible"}); a JSON file holding a list gives its objects."""
    name = task_name(task)
    for display, file in _match(path, base_dir):
        kind = _format(file) or "jsonl"  # no known suffix: JSON lines, the common export
        if kind == "jsonl":
            yield from _json_lines(display, file, name, quarantine)
        elif kind in ("csv", "tsv"):
            yield from _table_records(
                display, file, "," if kind == "csv" else "\t", name, quarantine
            )
        elif kind == "json":
            data = _whole_json(display, file, name, quarantine)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                yield from _squad_records(display, data, name, quarantine)
            elif isinstance(data, list):
                for number, record in enumerate(data):
                    locator = f"{display}:{number}"
                    if isinstance(record, dict):
                        yield locator, record
                    else:
                        quarantine.add("not_an_object", source=name, locator=locator, record=record)
            elif data is not None:
                quarantine.add(
                    "unsupported_json",
                    source=name,
                    locator=display,
                    detail="expected SQuAD's {'data': [...]} or a list of records",
                )
        else:
            quarantine.add(
                "unsupported_file",
                source=name,
                locator=display,
                detail=f"a {task.type} task reads JSON, JSONL, CSV or TSV files"
                + (
                    " (plain text only as path + target_path)"
                    if "target_path" in type(task).model_fields
                    else ""
                ),
            )


def _squad_records(
    display: str, data: dict[str, Any], name: str, quarantine: Quarantine
) -> Iterator[tuple[str, dict[str, Any]]]:
    for a, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            quarantine.add(
                "invalid_record",
                source=name,
                locator=f"{display}:{a}",
                detail="an article without a paragraphs list",
                record=article,
            )
            continue
        for p, paragraph in enumerate(paragraphs):
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                quarantine.add(
                    "invalid_record",
                    source=name,
                    locator=f"{display}:{a}/{p}",
                    detail="a paragraph without a qas list",
                    record=paragraph,
                )
                continue
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict):
                    quarantine.add(
                        "not_an_object", source=name, locator=f"{display}:{a}/{p}/{q}", record=qa
                    )
                    continue
                record = {"context": paragraph.get("context"), **qa}
                yield f"{display}:{a}/{p}/{qa.get('id', q)}", record


# -------------------------------------------------------------------------------- records


class BadRecord(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _text(record: dict[str, Any], field: str) -> str:
    """A record's field as stripped text; BadRecord when absent, not text or blank."""
    value = record.get(field)
    if value is None:
        raise BadRecord("missing_field", f"no {field!r} field")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRecord("invalid_field", f"{field!r} is a {type(value).__name__}, not text")
    text = str(value).strip()
    if not text:
        raise BadRecord("empty_field", f"{field!r} is empty")
    return text


def _gold_answers(value: Any) -> list[str]:
    """Answer texts from a list (of strings or {"text"} objects), one string, or the Hugging
    Face form {"text": [...], "answer_start": [...]}; an empty list means unanswerable."""
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):  # a list written into a CSV cell as JSON
            try:
                value = json.loads(stripped)
            except ValueError:
                value = [stripped]
        else:
            value = [stripped] if stripped else []
    if not isinstance(value, list):
        raise BadRecord("invalid_field", f"'answers' is a {type(value).__name__}")
    texts = []
    for answer in value:
        text = answer.get("text") if isinstance(answer, dict) else answer
        if not isinstance(text, str):
            raise BadRecord("invalid_field", f"an answer is a {type(text).__name__}, not text")
        if text.strip() and text.strip() not in texts:
            texts.append(text.strip())
    return texts


def _qa_fields(task: Any, record: dict[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    fields = {"context": _text(record, "context"), "question": _text(record, "question")}
    impossible = record.get("is_impossible") in (True, "true", "True", "1", 1)
    if "answers" not in record and not impossible:
        raise BadRecord("missing_field", "no 'answers' field")
    golds = [] if impossible else _gold_answers(record.get("answers", []))
    # SQuAD 2.0: no answer in the paragraph; the model is taught to say so.
    return fields, tuple(golds) if golds else (task.no_answer,)


def _summary_fields(task: Any, record: dict[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    article = _text(record, task.article_field)
    return {"article": article}, (_text(record, task.summary_field),)


def _translation_fields(task: Any, source: str) -> dict[str, str]:
    return {
        "source": source,
        "source_lang": task.source_lang,
        "target_lang": task.target_lang,
        "source_language": language_name(task.source_lang),
        "target_language": language_name(task.target_lang),
    }


def _classification_fields(task: Any, record: dict[str, Any]) -> tuple[dict[str, str], str]:
    text = _text(record, task.text_field)
    value = record.get(task.label_field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRecord("missing_field", f"no {task.label_field!r} field")
    # Labels compare as strings: 0 (JSON number) and "0" (CSV) both match the key "0".
    key = str(value).strip()
    if key not in task.labels:
        raise BadRecord(
            "unknown_label", f"label {key!r} is not one of {', '.join(map(repr, task.labels))}"
        )
    return {"text": text}, key


# How a record of each task type becomes an Example (BadRecord refuses it), registered against
# the task's config class; a subclass uses its parent's unless it has its own.
ExampleMaker = Callable[["_Builder", str, dict[str, Any]], Example]
EXAMPLE_MAKERS: dict[type, ExampleMaker] = {}


def example_maker(task: Any) -> ExampleMaker:
    for cls in type(task).__mro__:
        if cls in EXAMPLE_MAKERS:
            return EXAMPLE_MAKERS[cls]
    raise TypeError(f"no example maker for {type(task).__name__} tasks")


def makes_examples(config_class: type) -> Callable[[ExampleMaker], ExampleMaker]:
    """Decorator: `maker(builder, locator, record) -> Example` makes `config_class`'s examples."""

    def register(maker: ExampleMaker) -> ExampleMaker:
        EXAMPLE_MAKERS[config_class] = maker
        return maker

    return register


@makes_examples(ApplicationTask)
def _own_fields(builder: _Builder, locator: str, record: dict[str, Any]) -> Example:
    """A task type that says itself what a record's fields and answers are."""
    fields, answers = builder.task.example_fields(record)
    if not answers:
        raise BadRecord("missing_field", "the record has no answer")
    return builder.make(locator, fields, answers[0], tuple(answers))


@makes_examples(QATask)
def _qa_example(builder: _Builder, locator: str, record: dict[str, Any]) -> Example:
    fields, golds = _qa_fields(builder.task, record)
    return builder.make(locator, fields, golds[0], golds)


@makes_examples(SummarizationTask)
def _summary_example(builder: _Builder, locator: str, record: dict[str, Any]) -> Example:
    fields, (summary,) = _summary_fields(builder.task, record)
    return builder.make(locator, fields, summary, (summary,))


@makes_examples(TranslationTask)
def _translation_example(builder: _Builder, locator: str, record: dict[str, Any]) -> Example:
    task = builder.task
    source = _text(record, task.source_lang)
    target = _text(record, task.target_lang)
    return builder.make(locator, _translation_fields(task, source), target, (target,))


@makes_examples(ClassificationTask)
def _classification_example(builder: _Builder, locator: str, record: dict[str, Any]) -> Example:
    """Every label's response is a choice; the record's label says which one is right."""
    task = builder.task
    fields, key = _classification_fields(task, record)
    words = list(task.labels.values())
    choices = tuple(builder.response_template.format(answer=w, **fields) for w in words)
    label = list(task.labels).index(key)
    return Example(
        builder.name,
        locator,
        builder.prompt_template.format(**fields),
        choices[label],
        (words[label],),
        choices,
        label,
    )


class _Builder:
    """Records -> Examples for one task: templates applied, bad records quarantined."""

    def __init__(self, task: Any, quarantine: Quarantine):
        self.task = task
        self.name = task_name(task)
        self.quarantine = quarantine
        self.prompt_template, self.response_template = templates(task)

    def reject(self, locator: str, exc: BadRecord, record: Any) -> None:
        self.quarantine.add(
            exc.reason, source=self.name, locator=locator, detail=exc.detail, record=record
        )

    def make(
        self, locator: str, fields: dict[str, str], answer: str, answers: tuple[str, ...]
    ) -> Example:
        return Example(
            self.name,
            locator,
            self.prompt_template.format(**fields),
            self.response_template.format(answer=answer, **fields),
            answers,
        )

    def from_record(self, locator: str, record: dict[str, Any]) -> Example | None:
        try:
            return example_maker(self.task)(self, locator, record)
        except BadRecord as exc:
            self.reject(locator, exc, record)
            return None

    def from_path(self, path: str, base_dir: str | Path) -> Iterator[Example]:
        for locator, record in _records(self.task, path, base_dir, self.quarantine):
            example = self.from_record(locator, record)
            if example is not None:
                yield example

    def from_parallel_text(self, base_dir: str | Path) -> Iterator[Example]:
        """Translation from two plain-text files aligned by line (`path`, `target_path`)."""
        sources, targets = _match(self.task.path, base_dir), _match(self.task.target_path, base_dir)
        if len(sources) != len(targets):
            raise ConfigError(
                f"task {self.name!r}: path matches {len(sources)} files, target_path "
                f"{len(targets)}; the sides are paired file by file"
            )
        for (source_name, source_file), (target_name, target_file) in zip(
            sources, targets, strict=True
        ):
            yield from self._aligned(source_name, source_file, target_name, target_file)

    def _aligned(
        self, source_name: str, source_file: Any, target_name: str, target_file: Any
    ) -> Iterator[Example]:
        with open_binary(source_file) as src, open_binary(target_file) as tgt:
            source_lines = [line for _, line, _ in decoded_lines(src)]
            target_lines = [line for _, line, _ in decoded_lines(tgt)]
        for number in range(1, max(len(source_lines), len(target_lines)) + 1):
            locator = f"{source_name}:{number}"
            if number > min(len(source_lines), len(target_lines)):
                # One side is longer: its extra lines have no partner. Quarantined, not
                # guessed at: a missing line anywhere earlier would misalign everything.
                longer = source_name if len(source_lines) > len(target_lines) else target_name
                line = (source_lines if longer == source_name else target_lines)[number - 1]
                self.quarantine.add(
                    "unaligned_line",
                    source=self.name,
                    locator=f"{longer}:{number}",
                    detail=f"{source_name} has {len(source_lines)} lines, {target_name} "
                    f"{len(target_lines)}: line {number} has no partner",
                    record=line,
                )
                continue
            record = {"source": source_lines[number - 1], "target": target_lines[number - 1]}
            try:
                source, target = _text(record, "source"), _text(record, "target")
            except BadRecord as exc:
                self.reject(locator, exc, record)
                continue
            yield self.make(locator, _translation_fields(self.task, source), target, (target,))


# ---------------------------------------------------------------------------------- split


def is_eval(example: Example, eval_fraction: float) -> bool:
    """Held out iff the hash of the example's text falls below eval_fraction: deterministic,
    and independent of where the example sits in its file."""
    text = example.prompt + "\x00" + example.response
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < eval_fraction


def _reader(task: Any, base_dir: str | Path, quarantine: Quarantine) -> Any:
    """path -> the examples of that file (the templates checked before any file is read)."""
    builder = _Builder(task, quarantine)

    def read(path: str) -> Iterator[Example]:
        if getattr(task, "target_path", None) is not None and path == task.path:
            return builder.from_parallel_text(base_dir)
        return builder.from_path(path, base_dir)

    if task.eval_path is not None:
        # Check both exist up front: a typo in eval_path should not wait for a long train read.
        named_input_files(task, base_dir)
    return read


def read_examples(
    task: Any, base_dir: str | Path, quarantine: Quarantine, split: str = "train"
) -> list[Example]:
    """The task's examples of one split ("train", "eval" or "all"), in file order; at most
    `task.limit` of them. FileNotFoundError when a file is absent."""
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be 'train', 'eval' or 'all', not {split!r}")
    read = _reader(task, base_dir, quarantine)
    selected: Iterator[Example]
    if task.eval_path is not None:
        parts = {"train": [task.path], "eval": [task.eval_path], "all": [task.path, task.eval_path]}
        selected = (e for path in parts[split] for e in read(path))
    else:
        examples = read(task.path)
        if split == "all":
            selected = examples
        else:
            held_out = split == "eval"
            selected = (e for e in examples if is_eval(e, task.eval_fraction) == held_out)
    return list(islice(selected, task.limit))


def read_splits(
    task: Any, base_dir: str | Path, quarantine: Quarantine
) -> tuple[list[Example], list[Example]]:
    """(train, held-out) examples of the task, each as `read_examples` gives it, reading each
    file once (fine-tuning needs both)."""
    read = _reader(task, base_dir, quarantine)
    if task.eval_path is not None:
        return list(islice(read(task.path), task.limit)), list(
            islice(read(task.eval_path), task.limit)
        )
    train: list[Example] = []
    held_out: list[Example] = []
    cap = task.limit if task.limit is not None else float("inf")
    for example in read(task.path):
        part = held_out if is_eval(example, task.eval_fraction) else train
        if len(part) < cap:
            part.append(example)
        if len(train) >= cap and len(held_out) >= cap:
            break
    return train, held_out
