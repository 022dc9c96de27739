"""Hugging Face `datasets` sources: a dataset in, a stream of records (`RawRecord`) out.

`path` is, in this order:
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`: opened with
  `load_from_disk` (memory-mapped Arrow) and read in batches; `split` picks from a DatasetDict;
- local data files (a file, a folder or a glob of parquet / json / jsonl / csv / arrow): each file
  is its own unit of work, streamed with `load_dataset(<format>, data_files=..., streaming=True)`;
- otherwise a hub name, streamed with `load_dataset(path, subset, split=split, streaming=True)`
  (needs network, or a local cache with HF_DATASETS_OFFLINE=1).

Locators are `<display name>[<split>]#<row>`, counting rows from 0 in each file or dataset.
Loading failures (no such dataset, no network, a corrupt file) become problems, not crashes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.ingest.files import file_name, match_source_files, resolve_source_path
from pipeline.ingest.readers import RawRecord, ReadProblem

BATCH_ROWS = 1000
BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".arrow": "arrow",
}


def is_saved_dataset(folder: Path) -> bool:
    return folder.is_dir() and (
        (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()
    )


def builder_for(name: str) -> str | None:
    lowered = name.lower().removesuffix(".gz")
    for suffix, builder in BUILDERS.items():
        if lowered.endswith(suffix):
            return builder
    return None


def plan_hf(
    source: Any, base_dir: str | Path
) -> tuple[str, list[tuple[str, Any]], list[Any]] | ReadProblem:
    """How a source is read: ("disk" | "hub", [], []) or ("files", [(name, file), ...], the
    entries its folder or glob passed over: files.Skipped)."""
    resolved = resolve_source_path(source.path, base_dir)
    if is_saved_dataset(Path(resolved)):
        return "disk", [], []
    local = Path(resolved)
    if local.exists() or any(ch in resolved for ch in "*?[") or "://" in resolved:
        matched = match_source_files("hf", source.path, base_dir, source.follow_links)
        if matched.problem:
            return ReadProblem(matched.problem, source.path, f"{matched.detail} ({resolved})")
        return "files", list(zip(matched.names, matched.files, strict=True)), matched.skipped
    return "hub", [], []


def _rows(dataset: Any) -> Iterator[dict[str, Any]]:
    if hasattr(dataset, "iter"):
        for batch in dataset.iter(batch_size=BATCH_ROWS):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns), strict=True):
                yield dict(zip(columns, values, strict=True))
    else:  # an IterableDataset (streaming) yields rows
        yield from dataset


def iter_hf_records(
    source: Any, base_dir: str | Path, mode: str, file: tuple[str, Any] | None = None
) -> Iterator[RawRecord | ReadProblem]:
    import datasets

    resolved = resolve_source_path(source.path, base_dir)
    if mode == "disk":
        label = Path(source.path).as_posix()
    elif mode == "files":
        label = file[0]
    else:
        label = source.path
    locator_base = f"{label}[{source.split}]"
    row = -1
    try:
        if mode == "disk":
            dataset = datasets.load_from_disk(resolved)
            if isinstance(dataset, datasets.DatasetDict):
                if source.split not in dataset:
                    yield ReadProblem(
                        "missing_split",
                        label,
                        f"no split {source.split!r} (splits: {', '.join(dataset)})",
                    )
                    return
                dataset = dataset[source.split]
        elif mode == "files":
            builder = builder_for(file_name(file[1]))
            if builder is None:
                yield ReadProblem("unsupported_file", label, "not a parquet/json/csv/arrow file")
                return
            dataset = datasets.load_dataset(
                builder, data_files=[str(file[1])], split="train", streaming=True
            )
            locator_base = label
        else:
            dataset = datasets.load_dataset(
                source.path,
                source.subset,
                split=source.split,
                revision=source.revision,
                streaming=True,
            )
        for row, record in enumerate(_rows(dataset)):
            yield RawRecord(f"{locator_base}#{row}", record)
    except Exception as exc:  # datasets raises many kinds: missing repo, offline, bad file
        where = label if row < 0 else f"{label} after {locator_base}#{row}"
        yield ReadProblem("unreadable_dataset", where, f"{type(exc).__name__}: {exc}"[:1000])
        return
    if row < 0:
        yield ReadProblem("empty_file", label, "the dataset holds no rows")
