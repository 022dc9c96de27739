"""Incremental news runs (`run.mode: incremental`): two nightly increments on two halves of a
real news set (BBC News articles from ../shared/data), through the real Prefect flow.

The second increment must ingest only the new half (the first half's files are still there,
and exact copies of first-half articles under new ids are recognised too), drop its near-
duplicates of the first half in dedup (against the first run's signatures), keep the first
tokenizer, start pretraining from the first run's @champion, evaluate on the first run's
held-out split, and register a new version that takes @champion only if it wins. A third run
with nothing new stops after ingest and registers nothing. Slow (three pipeline runs).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flows.pipeline import pipeline_flow
from pipeline.config import EvaluateConfig, load_config
from pipeline.evaluate.increments import heldout_bpb
from pipeline.incremental import increments
from pipeline.outputs import read_manifest

pytestmark = pytest.mark.slow

FIRST, SECOND = 120, 120  # articles per half
NEAR_DUPLICATES = 8  # first-half articles, lightly edited, published again in the second half
EXACT_COPIES = 4  # first-half articles republished word for word under new ids
MODEL = "news-gpt"


def _articles(shared_data: Path) -> list[dict]:
    path = shared_data / "news" / "bbc_news_fulltext_shared.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    # One body per article: the corpus has exact duplicates of its own, which would blur counts.
    unique, bodies = [], set()
    for row in rows:
        if row["text"] not in bodies:
            bodies.add(row["text"])
            unique.append(row)
    return unique[: FIRST + SECOND]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def increments_run(prefect_server, tmp_path_factory):
    from conftest import SHARED_DATA
    from test_pipeline_e2e import SHRINK

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    shared_data = SHARED_DATA

    root = tmp_path_factory.mktemp("news")
    news = root / "news"
    news.mkdir()
    articles = _articles(shared_data)
    first, second = articles[:FIRST], articles[FIRST:]
    near = [
        {**a, "id": a["id"] + "-update", "text": a["text"] + "\n\nThis article was updated."}
        for a in first[:NEAR_DUPLICATES]
    ]
    copies = [{**a, "id": a["id"] + "-copy"} for a in first[-EXACT_COPIES:]]
    config = root / "news.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "news",
                "run": {"mode": "incremental"},
                "sources": [
                    {
                        "type": "jsonl",
                        "name": "bbc",
                        "path": "news/*.jsonl",
                        "fields": {"id": "id", "title": "title"},
                    }
                ],
                "register": {"model_name": MODEL},
            }
        )
    )
    overrides = [o for o in SHRINK if not o.startswith("register.")]
    workdir = root / "work"
    _write(news / "2005-01.jsonl", first)
    one = pipeline_flow(str(config), workdir=str(workdir), overrides=overrides)
    _write(news / "2005-02.jsonl", second + near + copies)
    two = pipeline_flow(str(config), workdir=str(workdir), overrides=overrides)
    three = pipeline_flow(str(config), workdir=str(workdir), overrides=overrides)
    return workdir, one, two, three


def test_the_second_increment_ingests_only_the_new_half(increments_run):
    _, one, two, _ = increments_run
    assert one["stages"]["ingest"]["counts"]["documents"] == FIRST
    counts = two["stages"]["ingest"]["counts"]
    # Every first-half article is skipped, the word-for-word copies too (by their text).
    assert counts["seen_before"] == FIRST + EXACT_COPIES
    assert counts["documents"] == SECOND + NEAR_DUPLICATES


def test_the_second_increment_drops_its_near_duplicates_of_the_first(increments_run):
    _, _, two, _ = increments_run
    dedup = two["stages"]["dedup"]["counts"]
    clean = two["stages"]["clean"]["counts"]
    assert dedup["input"] == clean["kept"]
    assert dedup["duplicates_of_previous"] >= NEAR_DUPLICATES - (
        two["stages"]["ingest"]["counts"]["documents"] - clean["kept"]
    )
    assert dedup["duplicates_of_previous"] > 0


def test_the_tokenizer_stays_and_evaluation_uses_the_first_held_out_split(increments_run):
    _, one, two, _ = increments_run
    assert two["stages"]["tokenizer"]["output"] == one["stages"]["tokenizer"]["output"]
    assert two["stages"]["tokenizer"]["cached"]
    assert two["stages"]["shards"]["output"] != one["stages"]["shards"]["output"]
    evaluate = read_manifest(Path(two["stages"]["evaluate"]["output"]))
    assert evaluate["inputs"]["shards"] == two["stages"]["shards"]["fingerprint"]
    # val_bpb (= val_bpb_first) on the first run's held-out split, val_bpb_new on today's
    metrics = two["stages"]["evaluate"]["metrics"]
    model = Path(two["stages"]["pretrain"]["output"]) / "final"
    scoring = EvaluateConfig(val_batches=4)  # SHRINK's evaluate.val_batches
    first = heldout_bpb(model, Path(one["stages"]["shards"]["output"]), scoring)
    new = heldout_bpb(model, Path(two["stages"]["shards"]["output"]), scoring)
    assert metrics["val_bpb"] == metrics["val_bpb_first"] == pytest.approx(first, rel=1e-4)
    assert metrics["val_bpb_new"] == pytest.approx(new, rel=1e-4)
    assert "start_val_bpb_new" in metrics


def test_pretraining_continues_from_the_champion(increments_run):
    _, one, two, _ = increments_run
    pretrain = Path(two["stages"]["pretrain"]["output"])
    request = json.loads((pretrain / "train_request.json").read_text())
    assert request["init_from"] and Path(request["init_from"]).is_dir()
    assert read_manifest(pretrain)["config"]["train"]["max_steps"] > 0
    # Weights that already learned the first half start below a fresh model's loss.
    client = MlflowClient(tracking_uri=two["tracking_uri"])

    def first_loss(run):
        history = client.get_metric_history(run["stages"]["pretrain"]["stage_run_id"], "train_loss")
        return min(history, key=lambda m: m.step).value

    assert first_loss(two) < first_loss(one)


def test_a_new_version_is_registered_and_promoted_only_if_it_wins(increments_run):
    workdir, one, two, _ = increments_run
    config = Path(two["config"])
    uri = two["tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    registered = two["stages"]["register"]["registered"]
    assert str(registered["previous_champion"]) == "1"
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
    assert champion == ("2" if registered["promoted"] else "1")
    if registered["promoted"]:  # the rule (val_bpb, lower wins) says it won
        assert registered["value"] < registered["previous_champion_metric"]
    challenger = str(client.get_model_version_by_alias(MODEL, "challenger").version)
    assert challenger == "2"
    record = increments(workdir, load_config(config))
    assert [r["increment"] for r in record] == [1, 2]
    assert record[1]["registered"] == f"models:/{MODEL}/2"


def test_a_run_with_nothing_new_stops_after_ingest(increments_run):
    _, _, _, three = increments_run
    assert list(three["stages"]) == ["ingest"]
    assert three["stages"]["ingest"]["counts"]["documents"] == 0
