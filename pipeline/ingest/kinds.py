"""Source kinds: what each source type does in ingest, found from its config class.

In: a source config (a `pipeline.config.Source`). Out: its units of work (`SourceKind.plan`,
and `plan_units` for a list of sources) and, per unit, its documents and refusals
(`SourceKind.read`, into a `reading.UnitSink`).

`SOURCE_KINDS` maps a config class to its kind; `kind_of(source)` looks the source's class up,
then its base classes. A source whose files hold records needs no kind of its own: the kind
of `RecordSource` calls the config's own `read_file(file, name)` (a generator of `RawRecord`s
and `ReadProblem`s), so a new record source type is one class:

    @register_source
    class TsvSource(RecordSource):
        type: Literal["tsv"]
        folder_suffixes = (".tsv",)

        def read_file(self, file, name):
            ...

`read_source_file` turns its exceptions into quarantine entries (truncated gzip, unreadable
file, empty file) and the stage does the rest (file discovery, ids, languages, counts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from pipeline.config import (
    CsvSource,
    FeedSource,
    HfSource,
    HtmlSource,
    IngestConfig,
    JsonlSource,
    ParquetSource,
    RecordSource,
    TextSource,
    WarcSource,
)
from pipeline.ingest.files import match_source_files
from pipeline.ingest.readers import (
    ReadItem,
    ReadProblem,
    read_csv,
    read_jsonl,
    read_parquet,
    read_source_file,
    read_text,
)
from pipeline.ingest.reading import UnitSink, UnitTask, read_feeds, read_pages, read_records
from pipeline.ingest.units import Unit, refusal_unit, split_line_file, splittable

GROUP_FILES = 200  # HTML pages or feeds per unit: small files, one Parquet part per unit


class SourceKind:
    """How one source type is read. `plan` lists its units (by default: the files its path
    matches, one unit each); `prepare` makes what all its units share, once, before they run
    (a path, or None); `read` reads one unit; `web`: its units extract HTML in the sandboxed
    worker (started early, so its start-up overlaps the rest)."""

    web: ClassVar[bool] = False

    def plan(self, source: Any, index: int, base_dir: str | Path, split_bytes: int) -> list[Unit]:
        matched = match_source_files(
            source.folder_suffixes, source.path, base_dir, getattr(source, "follow_links", False)
        )
        if matched.problem:
            detail = f"{matched.detail} ({matched.resolved})"
            problem = ReadProblem(matched.problem, source.path, detail)
            return [Unit(index, problem=problem), *refusal_unit(index, matched.skipped)]
        files = list(zip(matched.names, matched.files, strict=True))
        return refusal_unit(index, matched.skipped) + self.file_units(index, files, split_bytes)

    def file_units(self, index: int, files: list[tuple[str, Any]], split_bytes: int) -> list[Unit]:
        return [Unit(index, (file,)) for file in files]

    def prepare(
        self, source: Any, path: Path, base_dir: str | Path, settings: IngestConfig
    ) -> str | None:
        return None

    def read(self, task: UnitTask, sink: UnitSink) -> None:
        raise NotImplementedError


SOURCE_KINDS: dict[type, SourceKind] = {}


def source_kind(config_class: type) -> Callable[[type[SourceKind]], type[SourceKind]]:
    """Class decorator: this kind reads sources of `config_class` (and its subclasses)."""

    def register(kind: type[SourceKind]) -> type[SourceKind]:
        SOURCE_KINDS[config_class] = kind()
        return kind

    return register


def kind_of(source: Any) -> SourceKind:
    for cls in type(source).__mro__:
        if cls in SOURCE_KINDS:
            return SOURCE_KINDS[cls]
    raise TypeError(f"no source kind reads {type(source).__name__} sources")


def plan_units(sources: list[Any], base_dir: str | Path, split_bytes: int) -> list[Unit]:
    """Every source's units, in the order of the config (see units.py)."""
    units: list[Unit] = []
    for index, source in enumerate(sources):
        units += kind_of(source).plan(source, index, base_dir, split_bytes)
    return units


# ----------------------------------------------------------------------------- record files


@source_kind(RecordSource)
class RecordFiles(SourceKind):
    """Files of records, read by `items`: by default the config's own `read_file`."""

    def items(self, source: Any, file: Any, name: str, span: Any) -> Iterator[ReadItem]:
        return source.read_file(file, name)

    def read(self, task: UnitTask, sink: UnitSink) -> None:
        source, span = task.source, task.unit.span
        name, file = task.unit.files[0]
        items = read_source_file(self.items(source, file, name, span), name, span)
        read_records(task, sink, items)


@source_kind(JsonlSource)
class JsonlFiles(RecordFiles):
    """JSONL: a large uncompressed file is split into byte ranges cut at line ends."""

    def file_units(self, index: int, files: list[tuple[str, Any]], split_bytes: int) -> list[Unit]:
        units = []
        for name, file in files:
            spans = None
            if splittable(file, split_bytes):
                try:
                    spans = split_line_file(file, split_bytes)
                except OSError:
                    spans = None  # it went away: read whole, which reports it
            if spans:
                units += [Unit(index, ((name, file),), span=s) for s in spans]
            else:
                units.append(Unit(index, ((name, file),)))
        return units

    def items(self, source: Any, file: Any, name: str, span: Any) -> Iterator[ReadItem]:
        return read_jsonl(source, file, name, span)


@source_kind(CsvSource)
class CsvFiles(RecordFiles):
    def items(self, source: Any, file: Any, name: str, span: Any) -> Iterator[ReadItem]:
        return read_csv(source, file, name)


@source_kind(ParquetSource)
class ParquetFiles(RecordFiles):
    def items(self, source: Any, file: Any, name: str, span: Any) -> Iterator[ReadItem]:
        return read_parquet(source, file, name)


@source_kind(TextSource)
class TextFiles(RecordFiles):
    def items(self, source: Any, file: Any, name: str, span: Any) -> Iterator[ReadItem]:
        return read_text(source, file, name)


@source_kind(HfSource)
class HfDataset(SourceKind):
    """A Hugging Face dataset: one unit per local data file, or the whole saved/hub dataset."""

    def plan(self, source: Any, index: int, base_dir: str | Path, split_bytes: int) -> list[Unit]:
        from pipeline.ingest.hf import plan_hf

        plan = plan_hf(source, base_dir)
        if isinstance(plan, ReadProblem):
            return [Unit(index, problem=plan)]
        if plan[0] == "files":
            files = [Unit(index, (f,), hf_mode="files") for f in plan[1]]
            return refusal_unit(index, plan[2]) + files
        return [Unit(index, hf_mode=plan[0])]

    def read(self, task: UnitTask, sink: UnitSink) -> None:
        from pipeline.ingest.hf import iter_hf_records

        file = task.unit.files[0] if task.unit.files else None
        mode = task.unit.hf_mode or "hub"
        read_records(task, sink, iter_hf_records(task.source, task.base_dir, mode, file))


# ---------------------------------------------------------------------------------- web pages


@source_kind(WarcSource)
class WarcFiles(SourceKind):
    web = True

    def read(self, task: UnitTask, sink: UnitSink) -> None:
        from pipeline.ingest.web import iter_warc_pages

        limit = task.settings.extraction.max_page_bytes
        pages = (
            item
            for name, file in task.unit.files
            for item in iter_warc_pages(file, name, limit, sink.skipped)
        )
        read_pages(task, sink, pages)


class _Grouped(SourceKind):
    """Small files (one page or feed each): GROUP_FILES of them to a unit."""

    web = True

    def file_units(self, index: int, files: list[tuple[str, Any]], split_bytes: int) -> list[Unit]:
        return [
            Unit(index, tuple(files[start : start + GROUP_FILES]))
            for start in range(0, len(files), GROUP_FILES)
        ]


@source_kind(HtmlSource)
class HtmlFiles(_Grouped):
    def read(self, task: UnitTask, sink: UnitSink) -> None:
        from pipeline.ingest.web import iter_html_pages, load_url_map, source_root

        urls = load_url_map(task.source, task.base_dir)
        root = source_root(task.source.path, task.base_dir) if urls else None
        limit = task.settings.extraction.max_page_bytes
        read_pages(task, sink, iter_html_pages(list(task.unit.files), limit, urls, root))


@source_kind(FeedSource)
class FeedFiles(_Grouped):
    def prepare(
        self, source: Any, path: Path, base_dir: str | Path, settings: IngestConfig
    ) -> str | None:
        """The index of the pages an item may be joined with (the source's `pages`)."""
        if not source.pages:
            return None
        from pipeline.ingest.sandbox import worker_for
        from pipeline.ingest.web import PageIndex

        PageIndex.build(
            source.pages,
            base_dir,
            settings.extraction.max_page_bytes,
            worker_for(settings.extraction),
            source.follow_links,
        ).to_json(path)
        return str(path)

    def read(self, task: UnitTask, sink: UnitSink) -> None:
        read_feeds(task, sink)
