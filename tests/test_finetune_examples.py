"""Application-task examples: the shipped samples and small hand-written files in, Examples out.

Checks the formats each task reads (SQuAD JSON, JSONL, CSV/TSV, gzip, parallel text files), the
templates and their errors, the hash split (deterministic, disjoint, independent of file order),
`eval_path`, `limit`, and that bad records are quarantined with their reason, never raised.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipeline.config import (
    ClassificationTask,
    ConfigError,
    QATask,
    SummarizationTask,
    TranslationTask,
)
from pipeline.finetune.examples import (
    Example,
    is_eval,
    language_name,
    read_examples,
    read_splits,
    task_input_files,
)
from pipeline.quarantine import Quarantine, read_quarantine

REPO = Path(__file__).resolve().parents[1]
FINETUNE = REPO / "data" / "sample" / "finetune"
SST2_LABELS = {"0": "negative", "1": "positive"}


@pytest.fixture
def quarantine(tmp_path):
    with Quarantine(tmp_path / "q") as q:
        (tmp_path / "q").mkdir(exist_ok=True)
        yield q


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ the samples


def test_squad_sample_gives_answers_and_no_answer(quarantine):
    task = QATask(type="qa", path="squad_v2_sample.json")
    examples = read_examples(task, str(FINETUNE), quarantine, split="all")
    assert len(examples) == 424 and not quarantine.counts
    unanswerable = [e for e in examples if e.answers == ("no answer",)]
    assert len(unanswerable) == 200
    assert all(e.response == " no answer" for e in unanswerable)
    first = examples[0]
    assert first.task == "qa"
    assert first.locator == "squad_v2_sample.json:0/0/56dde0379a695914005b9636"
    assert first.prompt.startswith('The English name "Normans" comes from the French words')
    assert first.prompt.endswith(
        "\nQuestion: What is the original meaning of the word Norman?\nAnswer:"
    )
    # Every distinct gold is kept for scoring (in order); the first is the training response.
    assert first.answers == ("Viking", "Norseman, Viking") and first.response == " Viking"
    assert not any(e.choices or e.label is not None for e in examples)


def test_sst2_with_eval_path_and_labels(quarantine):
    task = ClassificationTask(
        type="classification",
        name="sst2",
        path="sst2_sample.jsonl",
        eval_path="sst2_dev_sample.jsonl",
        labels=SST2_LABELS,
    )
    train = read_examples(task, str(FINETUNE), quarantine)
    held_out = read_examples(task, str(FINETUNE), quarantine, split="eval")
    assert len(train) == 3000 and len(held_out) == 550
    assert len(read_examples(task, str(FINETUNE), quarantine, split="all")) == 3550
    assert sum(e.label for e in train) == 1500  # balanced
    assert {e.locator.split(":")[0] for e in held_out} == {"sst2_dev_sample.jsonl"}
    example = held_out[0]
    assert example.prompt == "it 's a charming and often affecting journey .\nAnswer:"
    assert example.choices == (" negative", " positive") and example.label == 1
    assert example.response == " positive" and example.answers == ("positive",)
    assert [p.name for p in task_input_files(task, str(FINETUNE))] == [
        "sst2_sample.jsonl",
        "sst2_dev_sample.jsonl",
    ]
    assert not quarantine.counts


def test_xsum_and_flores_samples(quarantine):
    summaries = SummarizationTask(
        type="summarization", path="xsum_sample.jsonl", article_field="document", limit=3
    )
    examples = read_examples(summaries, str(FINETUNE), quarantine, split="all")
    assert len(examples) == 3
    record = json.loads((FINETUNE / "xsum_sample.jsonl").read_text().splitlines()[0])
    assert examples[0].prompt == record["document"].strip() + "\nTL;DR:"
    assert examples[0].answers == (record["summary"].strip(),)
    assert examples[0].locator == "xsum_sample.jsonl:1"

    translation = TranslationTask(
        type="translation", path="flores_en_de_sample.jsonl", source_lang="en", target_lang="de"
    )
    pairs = read_examples(translation, str(FINETUNE), quarantine, split="all")
    assert len(pairs) == 300
    record = json.loads((FINETUNE / "flores_en_de_sample.jsonl").read_text().splitlines()[0])
    assert pairs[0].prompt == f"English: {record['en']}\nGerman:"
    assert pairs[0].response == " " + record["de"] and pairs[0].answers == (record["de"],)
    assert not quarantine.counts


# ---------------------------------------------------------------------------------- the split


def test_hash_split_is_deterministic_disjoint_and_order_free(tmp_path, quarantine):
    records = [{"text": f"review number {i} was fine", "label": i % 2} for i in range(400)]
    write_jsonl(tmp_path / "a.jsonl", records)
    write_jsonl(tmp_path / "b.jsonl", records[::-1])
    task = ClassificationTask(
        type="classification", path="a.jsonl", labels=SST2_LABELS, eval_fraction=0.25
    )
    train = read_examples(task, str(tmp_path), quarantine)
    held_out = read_examples(task, str(tmp_path), quarantine, split="eval")
    everything = read_examples(task, str(tmp_path), quarantine, split="all")
    assert read_examples(task, str(tmp_path), quarantine, split="eval") == held_out
    assert {e.locator for e in train}.isdisjoint({e.locator for e in held_out})
    assert sorted(train + held_out, key=lambda e: e.locator) == sorted(
        everything, key=lambda e: e.locator
    )
    assert 60 <= len(held_out) <= 140  # 25 % of 400, give or take the hash
    assert all(is_eval(e, 0.25) for e in held_out) and not any(is_eval(e, 0.25) for e in train)
    # The same records in the opposite order: the same ones held out, in file order.
    reversed_task = task.model_copy(update={"path": "b.jsonl"})
    reversed_eval = read_examples(reversed_task, str(tmp_path), quarantine, split="eval")
    assert [e.prompt for e in reversed_eval] == [e.prompt for e in held_out][::-1]
    # limit: the first N of the selected split.
    limited = task.model_copy(update={"limit": 7})
    assert read_examples(limited, str(tmp_path), quarantine, split="eval") == held_out[:7]
    assert read_examples(limited, str(tmp_path), quarantine) == train[:7]
    with pytest.raises(ValueError, match="split"):
        read_examples(task, str(tmp_path), quarantine, split="test")


# ------------------------------------------------------------------------------- the formats


def test_squad_json_unanswerable_and_custom_no_answer(tmp_path, quarantine):
    squad = {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "What is the capital of France?",
                                "answers": [{"text": "Paris", "answer_start": 0}],
                                "is_impossible": False,
                            },
                            {
                                "id": "q2",
                                "question": "What is the capital of Spain?",
                                "answers": [],
                                "plausible_answers": [{"text": "Paris", "answer_start": 0}],
                                "is_impossible": True,
                            },
                            {"id": "q3", "question": "Who?", "answers": []},
                            {"id": "q4", "answers": [{"text": "x"}]},
                        ],
                    },
                    {"context": "no questions here"},
                ],
            }
        ],
    }
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    task = QATask(type="qa", path="squad.json", no_answer="unanswerable")
    examples = read_examples(task, str(tmp_path), quarantine, split="all")
    assert [e.locator for e in examples] == [
        "squad.json:0/0/q1",
        "squad.json:0/0/q2",
        "squad.json:0/0/q3",
    ]
    assert [e.response for e in examples] == [" Paris", " unanswerable", " unanswerable"]
    assert examples[1].answers == ("unanswerable",)
    assert examples[0].prompt == (
        "Paris is the capital of France.\nQuestion: What is the capital of France?\nAnswer:"
    )
    assert dict(quarantine.counts) == {"missing_field": 1, "invalid_record": 1}


def test_qa_jsonl_and_csv_answers_forms(tmp_path, quarantine):
    write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"context": "A b c.", "question": "Q1?", "answers": ["b", "b c"]},
            {"context": "A b c.", "question": "Q2?", "answers": "c"},
            {
                "context": "A b c.",
                "question": "Q3?",
                "answers": {"text": ["a"], "answer_start": [0]},
            },
            {"context": "A b c.", "question": "Q4?", "answers": []},
            {"context": "A b c.", "question": "Q5?"},
        ],
    )
    (tmp_path / "qa.csv").write_text(
        'context,question,answers\n"One, two.",Which?,two\n"One, two.",Both?,"[""one"", ""two""]"\n'
    )
    task = QATask(type="qa", path="qa.jsonl")
    answers = [e.answers for e in read_examples(task, str(tmp_path), quarantine, split="all")]
    assert answers == [("b", "b c"), ("c",), ("a",), ("no answer",)]
    assert dict(quarantine.counts) == {"missing_field": 1}
    csv_task = QATask(type="qa", path="qa.csv")
    rows = read_examples(csv_task, str(tmp_path), quarantine, split="all")
    assert [e.answers for e in rows] == [("two",), ("one", "two")]
    assert rows[0].prompt == "One, two.\nQuestion: Which?\nAnswer:"
    assert [e.locator for e in rows] == ["qa.csv:1", "qa.csv:2"]


def test_summarization_gzip_and_csv(tmp_path, quarantine):
    with gzip.open(tmp_path / "news.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"body": "Long text here.", "tldr": "Short."}) + "\n")
        handle.write(json.dumps({"body": "Other text.", "tldr": "  "}) + "\n")
    task = SummarizationTask(
        type="summarization",
        path="news.jsonl.gz",
        article_field="body",
        summary_field="tldr",
        response_template=" {answer}\n",
    )
    examples = read_examples(task, str(tmp_path), quarantine, split="all")
    assert examples == [
        Example(
            "summarization", "news.jsonl.gz:1", "Long text here.\nTL;DR:", " Short.\n", ("Short.",)
        )
    ]
    assert dict(quarantine.counts) == {"empty_field": 1}


def test_classification_labels_compare_as_strings_and_bad_records(tmp_path, quarantine):
    write_jsonl(
        tmp_path / "cls.jsonl",
        [
            {"text": "good film", "label": 1},
            {"text": "bad film", "label": "0"},
            "{not json",
            [1, 2],
            {"text": "meh", "label": 2},
            {"text": "", "label": 1},
            {"label": 0},
            {"text": "no label"},
            {"text": {"nested": 1}, "label": 1},
        ],
    )
    task = ClassificationTask(
        type="classification", name="sent", path="cls.jsonl", labels=SST2_LABELS
    )
    examples = read_examples(task, str(tmp_path), quarantine, split="all")
    assert [(e.prompt, e.label, e.response) for e in examples] == [
        ("good film\nAnswer:", 1, " positive"),
        ("bad film\nAnswer:", 0, " negative"),
    ]
    assert dict(quarantine.counts) == {
        "invalid_json": 1,
        "not_an_object": 1,
        "unknown_label": 1,
        "empty_field": 1,
        "missing_field": 2,
        "invalid_field": 1,
    }
    quarantine.close()
    entries = read_quarantine(quarantine.path.parent)
    unknown = next(e for e in entries if e["reason"] == "unknown_label")
    assert unknown["source"] == "sent" and unknown["locator"] == "cls.jsonl:5"
    assert "'2'" in unknown["detail"] and "'0', '1'" in unknown["detail"]
    assert json.loads(unknown["record"]) == {"text": "meh", "label": 2}


def test_translation_tsv_and_parallel_text_files(tmp_path, quarantine):
    (tmp_path / "pairs.tsv").write_text("fr\ten\nBonjour\tHello\nMerci\t\n")
    tsv = TranslationTask(type="translation", path="pairs.tsv", source_lang="fr", target_lang="en")
    examples = read_examples(tsv, str(tmp_path), quarantine, split="all")
    assert [(e.prompt, e.response) for e in examples] == [("French: Bonjour\nEnglish:", " Hello")]
    assert dict(quarantine.counts) == {"empty_field": 1}

    (tmp_path / "src.en").mkdir()
    (tmp_path / "src.en" / "a.txt").write_text("One.\nTwo.\n\nFour.\nFive.\n")
    (tmp_path / "tgt.txt").write_text("Eins.\nZwei.\nDrei.\nVier.\n")
    parallel = TranslationTask(
        type="translation",
        path="src.en/a.txt",
        target_path="tgt.txt",
        source_lang="eng_Latn",
        target_lang="xx",
        prompt_template="{source_lang}>{target_lang} ({source_language}, {target_language}): {source} =",
    )
    examples = read_examples(parallel, str(tmp_path), quarantine, split="all")
    assert [(e.locator, e.prompt, e.answers) for e in examples] == [
        ("src.en/a.txt:1", "eng_Latn>xx (English, xx): One. =", ("Eins.",)),
        ("src.en/a.txt:2", "eng_Latn>xx (English, xx): Two. =", ("Zwei.",)),
        ("src.en/a.txt:4", "eng_Latn>xx (English, xx): Four. =", ("Vier.",)),
    ]
    assert quarantine.counts["unaligned_line"] == 1 and quarantine.counts["empty_field"] == 2
    quarantine.close()
    unaligned = next(
        e for e in read_quarantine(quarantine.path.parent) if e["reason"] == "unaligned_line"
    )
    assert unaligned["locator"] == "src.en/a.txt:5" and "5 lines" in unaligned["detail"]
    assert [p.name for p in task_input_files(parallel, str(tmp_path))] == ["a.txt", "tgt.txt"]


def test_language_names():
    assert [language_name(c) for c in ("de", "deu_Latn", "pt-BR", "EN", "tlh")] == [
        "German",
        "German",
        "Portuguese",
        "English",
        "tlh",
    ]


# ------------------------------------------------------------------------------- the errors


def test_template_errors_name_the_task_and_field(tmp_path, quarantine):
    absent = "no-such-file.jsonl"  # templates are checked before any file is read
    cases = [
        (
            QATask(type="qa", name="myqa", path=absent, prompt_template="{contxt}\n{question}"),
            "contxt",
        ),
        (QATask(type="qa", path=absent, response_template=" {answer} {summary}"), "summary"),
        (SummarizationTask(type="summarization", path=absent, prompt_template="{}"), "positional"),
        (
            ClassificationTask(
                type="classification", path=absent, labels=SST2_LABELS, prompt_template="{text"
            ),
            "not valid",
        ),
        (QATask(type="qa", path=absent, prompt_template="{context:{width}}"), "width"),
    ]
    for task, needle in cases:
        with pytest.raises(ConfigError, match=needle) as info:
            read_examples(task, str(tmp_path), quarantine)
        assert repr(task.name or task.type) in str(info.value)
    # Fields of the task and attribute/index forms are fine.
    write_jsonl(tmp_path / "qa.jsonl", [{"context": "c", "question": "q", "answers": ["a"]}])
    task = QATask(
        type="qa",
        path="qa.jsonl",
        prompt_template="Q: {question} C: {context[0]}",
        response_template=" {answer} ({question})",
    )
    (example,) = read_examples(task, str(tmp_path), quarantine, split="all")
    assert (example.prompt, example.response) == ("Q: q C: c", " a (q)")


def test_missing_files_raise_naming_the_path(tmp_path, quarantine):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x", "label": 0}])
    for task in (
        ClassificationTask(type="classification", path="absent.jsonl", labels=SST2_LABELS),
        ClassificationTask(type="classification", path="absent/*.jsonl", labels=SST2_LABELS),
        ClassificationTask(
            type="classification", path="train.jsonl", eval_path="dev.jsonl", labels=SST2_LABELS
        ),
    ):
        missing = task.eval_path or task.path
        with pytest.raises(FileNotFoundError, match=missing.replace("*", r"\*")):
            read_examples(task, str(tmp_path), quarantine)
        with pytest.raises(FileNotFoundError):
            task_input_files(task, str(tmp_path))


def test_a_folder_reads_its_record_files_in_name_order(tmp_path, quarantine):
    folder = tmp_path / "news"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"article": "Second.", "summary": "2"}])
    (folder / "a.csv").write_text("article,summary\nFirst.,1\n")
    (folder / "c.parquet").write_bytes(b"PAR1 not records")
    (folder / "_quarantine.jsonl").write_text("{}\n")  # hidden: not an input
    task = SummarizationTask(type="summarization", path="news")
    examples = read_examples(task, str(tmp_path), quarantine, split="all")
    assert [(e.locator, e.answers) for e in examples] == [
        ("news/a.csv:1", ("1",)),
        ("news/b.jsonl:1", ("2",)),
    ]
    assert not quarantine.counts
    assert [p.name for p in task_input_files(task, str(tmp_path))] == ["a.csv", "b.jsonl"]


@pytest.mark.parametrize("limit", [None, 40])
@pytest.mark.parametrize("eval_path", [None, "sst2_dev_sample.jsonl"])
def test_read_splits_is_both_splits_in_one_read(tmp_path, limit, eval_path):
    task = ClassificationTask(type="classification", path="sst2_sample.jsonl", limit=limit,
                              eval_path=eval_path, eval_fraction=0.2, labels=SST2_LABELS)  # fmt: skip
    with Quarantine(tmp_path) as quarantine:
        train, held_out = read_splits(task, str(FINETUNE), quarantine)
        assert train == read_examples(task, str(FINETUNE), quarantine, split="train")
        assert held_out == read_examples(task, str(FINETUNE), quarantine, split="eval")
    assert train and held_out
    if limit:
        assert len(train) == len(held_out) == limit
