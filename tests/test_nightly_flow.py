"""Three nightly increments through the real Prefect flow, under the default settings: the
champion must move on days 2 and 3 (issue 20).

Real news (BBC articles from ../shared/data) in three days, each day after the first with
reprints of earlier articles ("UPDATED:" and a line added). Each later day replays the earlier
days' documents (run.replay_fraction 0.5 by default), continues from the champion with its
optimizer state and the continuation schedule, and is scored on the first day's held-out split
(`val_bpb`, `val_bpb_first`) and on its own (`val_bpb_new`, beside the champion's
`start_val_bpb_new`). Slow: three pipeline runs of a tiny model (~1-2 min).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flows.pipeline import pipeline_flow

pytestmark = pytest.mark.slow

PER_DAY = 70  # new articles a day
REPRINTS = 6  # earlier articles reprinted each later day
MODEL = "nightly-gpt"


def _articles(shared_data: Path) -> list[dict]:
    path = shared_data / "news" / "bbc_news_fulltext_shared.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    unique, bodies = [], set()
    for row in rows:
        if row["text"] not in bodies:
            bodies.add(row["text"])
            unique.append(row)
    return unique[: 3 * PER_DAY]


@pytest.fixture(scope="module")
def three_days(prefect_server, tmp_path_factory):
    from conftest import SHARED_DATA
    from test_pipeline_e2e import SHRINK

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    articles = _articles(SHARED_DATA)
    root = tmp_path_factory.mktemp("nightly")
    news = root / "news"
    news.mkdir()
    config = root / "nightly.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "nightly",
                "run": {"mode": "incremental"},
                "sources": [
                    {"type": "jsonl", "name": "bbc", "path": "news/*.jsonl", "fields": {"id": "id"}}
                ],
                "register": {"model_name": MODEL},
            }
        )
    )
    overrides = [o for o in SHRINK if not o.startswith("register.")]
    workdir = root / "work"
    runs = []
    for day in range(3):
        rows = articles[day * PER_DAY : (day + 1) * PER_DAY]
        if day:  # reprints of earlier days' articles, updated
            rows += [
                {**a, "id": f"{a['id']}-upd{day}", "text": "UPDATED: " + a["text"] + "\nMore."}
                for a in articles[(day - 1) * PER_DAY : (day - 1) * PER_DAY + REPRINTS]
            ]
        (news / f"day-{day + 1}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
        )
        runs.append(pipeline_flow(str(config), workdir=str(workdir), overrides=overrides))
    return runs


def test_the_champion_moves_on_days_two_and_three(three_days):
    uri = three_days[0]["tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for day, run in enumerate(three_days[1:], start=2):
        registered = run["stages"]["register"]["registered"]
        assert registered["promoted"], f"day {day}: {registered}"
        assert str(registered["previous_champion"]) == str(day - 1)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "3"


def test_each_day_is_better_on_the_first_and_on_its_own_held_out(three_days):
    metrics = [run["stages"]["evaluate"]["metrics"] for run in three_days]
    firsts = [m["val_bpb_first"] for m in metrics]
    assert firsts[1] < firsts[0] and firsts[2] < firsts[1]
    for m in metrics[1:]:  # against the champion it started from, on the same documents
        assert m["val_bpb_new"] < m["start_val_bpb_new"]


def test_later_days_replay_earlier_documents_and_continue_the_optimizer(three_days):
    for day, run in enumerate(three_days[1:], start=2):
        shards = run["stages"]["shards"]["counts"]
        # half of the train mix is replayed (whole documents: about half)
        assert 0.4 < shards["replay_tokens"] / shards["train_tokens"] < 0.6
        replayed = run["stages"]["shards"]["replay"]["from"]
        assert len(replayed) == day - 1 and all(tokens > 0 for tokens in replayed.values())
        pretrain = Path(run["stages"]["pretrain"]["output"])
        request = json.loads((pretrain / "train_request.json").read_text())
        previous = Path(three_days[day - 2]["stages"]["pretrain"]["output"])
        assert request["init_state_from"] == str(
            previous / "checkpoints" / "step-000030" / "trainer_state.ckpt"
        )
