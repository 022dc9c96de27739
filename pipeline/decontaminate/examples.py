"""The evaluation examples a config names: task configs in, `EvalExample`s out.

In: a `PipelineConfig` (its `evaluate.tasks`, its `finetune.tasks`, and `decontaminate.tasks`
to restrict them). Out: for each task that reads a file, its examples as (set, example id,
text), in file order, and `eval_inputs`, a list of strings that changes exactly when the
examples would (the tasks' definitions and the contents of their files): the index cache key
and the stage's fingerprint.

What an example's text is, by task type (what a copy of it in web text would contain):
- hellaswag: the context and the right ending (llama.cpp's `ctx`, or `ctx_a ctx_b`);
- multiple_choice: the context, the delimiter and the right choice;
- lambada: the passage; perplexity: each JSONL record's text, or each text file;
- wikitext2: each article (detokenized, as the evaluation scores it);
- qa, summarization, translation, classification: each held-out example (prompt + response),
  every one of them whatever `limit` says (evaluation may score fewer).
Every task limit is ignored: all of an evaluation set is checked. Records that cannot be read are
skipped here and counted by the evaluate stage, which quarantines them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.config import (
    ApplicationTask,
    ConfigError,
    FileEvalTask,
    HellaSwagTask,
    LambadaTask,
    MultipleChoiceTask,
    PerplexityTask,
    PipelineConfig,
    WikiText2Task,
    task_name,
)
from pipeline.decontaminate.index import EvalExample
from pipeline.quarantine import Quarantine

# Task fields that change what is scored or how, but not which texts an evaluation set holds.
NOT_CONTENT = {"name", "limit", "missing", "max_new_tokens", "weight"}


def checked_tasks(config: PipelineConfig) -> list[Any]:
    """The file tasks decontamination checks against: evaluate's, then fine-tuning's (a task
    listed in both, by name, once), restricted to `decontaminate.tasks` when it is set."""
    by_name: dict[str, Any] = {}
    for task in [*config.evaluate.tasks, *config.finetune.tasks]:
        if getattr(task, "path", None) is not None:
            by_name.setdefault(task_name(task), task)
    wanted = config.decontaminate.tasks
    if wanted is None:
        return list(by_name.values())
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ConfigError(
            f"decontaminate.tasks: no task with a file named {', '.join(unknown)} "
            f"(expected some of: {', '.join(by_name) or 'none configured'})"
        )
    return [by_name[name] for name in wanted]


def _task_files(task: Any, base_dir: str) -> list[tuple[str, Path]]:
    from pipeline.eval_files import task_files
    from pipeline.finetune.examples import named_input_files

    if isinstance(task, ApplicationTask):
        return named_input_files(task, base_dir)
    return task_files(task, base_dir)


def eval_inputs(config: PipelineConfig) -> list[str]:
    """One string per checked task: its content-defining fields and its files' digests."""
    from pipeline.eval_files import TaskSkipped
    from pipeline.ingest.files import file_content_digest

    out = []
    for task in checked_tasks(config):
        definition = task.model_dump(mode="json", exclude=NOT_CONTENT)
        try:
            files = [[n, file_content_digest(p)] for n, p in _task_files(task, config.base_dir)]
        except (TaskSkipped, FileNotFoundError) as exc:
            files = [f"absent: {exc}"]
        payload = json.dumps({"task": task_name(task), "definition": definition, "files": files})
        out.append(hashlib.blake2b(payload.encode(), digest_size=16).hexdigest())
    return out


def eval_examples(config: PipelineConfig, quarantine: Quarantine) -> Iterator[EvalExample]:
    """Every example of every checked task, task by task, in file order."""
    for task in checked_tasks(config):
        yield from _task_examples(task, config.base_dir, quarantine)


def absent_tasks(config: PipelineConfig) -> dict[str, str]:
    """Checked tasks whose files are not there (marked `missing: skip`): name -> why."""
    from pipeline.eval_files import TaskSkipped

    absent = {}
    for task in checked_tasks(config):
        try:
            _task_files(task, config.base_dir)
        except (TaskSkipped, FileNotFoundError) as exc:
            absent[task_name(task)] = str(exc)
    return absent


def _task_examples(task: Any, base_dir: str, quarantine: Quarantine) -> Iterator[EvalExample]:
    from pipeline.eval_files import TaskSkipped, task_files

    name = task_name(task)
    if isinstance(task, ApplicationTask):
        from pipeline.finetune.examples import read_examples

        try:
            whole = task.model_copy(update={"limit": None})
            examples = read_examples(whole, base_dir, quarantine, split="eval")
        except FileNotFoundError:
            return
        for example in examples:
            yield EvalExample(name, example.locator, example.prompt + example.response)
        return
    try:
        files = task_files(task, base_dir)
    except TaskSkipped:
        return
    for display, path in files:
        yield from file_examples(task)(task, display, path, name, quarantine)


FileExamples = Callable[[Any, str, Path, str, Quarantine], Iterator[EvalExample]]
# What a file of each task type holds, by config class (a subclass uses its parent's).
FILE_EXAMPLES: dict[type, FileExamples] = {}
# The text of one JSONL record, by config class; None when it has none.
RECORD_TEXT: dict[type, Callable[[Any, dict[str, Any]], str | None]] = {}


def _found(table: dict[type, Any], task: Any) -> Any:
    for cls in type(task).__mro__:
        if cls in table:
            return table[cls]
    raise TypeError(f"no decontamination reader for {type(task).__name__} tasks")


def file_examples(task: Any) -> FileExamples:
    return _found(FILE_EXAMPLES, task)


def _wikitext_file(
    task: Any, display: str, path: Path, name: str, quarantine: Quarantine
) -> Iterator[EvalExample]:
    from pipeline.eval_files import read_text
    from pipeline.wikitext import wikitext_pages

    for number, page in enumerate(wikitext_pages(read_text(path)), 1):
        yield EvalExample(name, f"{display}:article {number}", page)


def _records_file(
    task: Any, display: str, path: Path, name: str, quarantine: Quarantine
) -> Iterator[EvalExample]:
    """A JSONL file: each record's text; any other file (perplexity): one document."""
    from pipeline.eval_files import read_text
    from pipeline.ingest.files import jsonl_records

    if not _is_jsonl(path):
        yield EvalExample(name, display, read_text(path))
        return
    for locator, record in jsonl_records([(display, path)], name, quarantine):
        try:
            text = _found(RECORD_TEXT, task)(task, record)
        except (KeyError, IndexError, TypeError, ValueError):
            text = None
        if text:
            yield EvalExample(name, locator, text)


FILE_EXAMPLES.update({FileEvalTask: _records_file, WikiText2Task: _wikitext_file})


def _is_jsonl(path: Path) -> bool:
    return path.name.lower().removesuffix(".gz").endswith((".jsonl", ".ndjson"))


def _hellaswag_text(task: Any, record: dict[str, Any]) -> str | None:
    from pipeline.eval_files import hellaswag_preprocess

    context = record["ctx"] if "ctx" in record else f"{record['ctx_a']} {record['ctx_b']}"
    ending = record["endings"][int(record["label"])]
    return hellaswag_preprocess(f"{context} {ending}")


def _choice_text(task: Any, record: dict[str, Any]) -> str | None:
    choices = record[task.choices_field]
    label = record[task.label_field]
    choice = choices[int(label)] if str(label).lstrip("-").isdigit() else label
    return f"{record[task.context_field]}{task.delimiter}{choice}"


def _field_text(field: str) -> Callable[[Any, dict[str, Any]], str | None]:
    def text_of(task: Any, record: dict[str, Any]) -> str | None:
        text = record[getattr(task, field, field)]
        return text if isinstance(text, str) and text.strip() else None

    return text_of


RECORD_TEXT.update(
    {
        HellaSwagTask: _hellaswag_text,
        MultipleChoiceTask: _choice_text,
        LambadaTask: _field_text("text"),
        PerplexityTask: _field_text("text_field"),
    }
)
