"""Sweeps: variants from a grid, named variants and seeds, checked before anything runs (a bad
grid key is a config error naming it), and one real sweep flow (real Prefect subflows, real
MLflow on SQLite, real training on the CPU) whose shared stages ran once, with its comparison
table and plot on the parent MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flows.cli import main as cli_main
from pipeline.config import ConfigError
from pipeline.sweep import check_same_budget, check_variants, expand, reference_metric
from pipeline.sweep_table import compare

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SAMPLE = REPO / "data" / "sample"


def _sweep_config(tmp_path: Path) -> Path:
    """The quickstart on two small sample sources, a tiny model and a few steps, ranked on a
    fixed reference text it does not train on (three WikiText-2 articles)."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["sources"] = [
        {"type": "text", "name": "botchan", "path": str(SAMPLE / "botchan.txt"), "split": "paragraphs"},
        {"type": "jsonl", "name": "ftfy", "path": str(SAMPLE / "ftfy_text_snippets.jsonl"), "fields": {"title": "label"}},
    ]  # fmt: skip
    raw["evaluate"]["tasks"] = [
        {"type": "heldout"},
        {"type": "perplexity", "name": "reference", "path": str(SAMPLE / "wikitext2_test_articles.jsonl.gz"), "limit": 2},
    ]  # fmt: skip
    raw["model"].update(n_layer=1, n_head=2, n_embd=32, block_size=32)
    raw["tokenizer"]["vocab_size"] = 320
    raw["train"].update(max_steps=4, batch_size=4, warmup_steps=1, val_every_steps=2,
                        val_batches=1, checkpoint_every_steps=2, progress_bar=False,
                        sample_tokens=0)  # fmt: skip
    raw["evaluate"].update(val_batches=1, max_new_tokens=2, prompts=["The"])
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_a_grid_is_every_combination_and_seeds_repeat_each_variant():
    variants = expand(
        ["clean.min_words=20,50", "quality.keep_fraction=1.0,0.3"], seeds="0,1", base=["a.b=1"]
    )
    assert len(variants) == 8
    assert {v.name for v in variants} == {
        "min_words=20 keep_fraction=1.0", "min_words=20 keep_fraction=0.3",
        "min_words=50 keep_fraction=1.0", "min_words=50 keep_fraction=0.3",
    }  # fmt: skip
    first = variants[0]
    assert first.all_overrides == [
        "a.b=1", "clean.min_words=20", "quality.keep_fraction=1.0", "train.seed=0",
    ]  # fmt: skip
    assert [v.seed for v in variants[:2]] == [0, 1]
    # a list value keeps its commas; named variants come with their own overrides
    named = expand(
        ["shards.val_fraction=0.1,0.2"],
        [["rules"], ["quality", "quality.enabled=true", "evaluate.prompts=[a,b]"]],
    )
    assert [v.name for v in named] == [
        "rules val_fraction=0.1", "rules val_fraction=0.2",
        "quality val_fraction=0.1", "quality val_fraction=0.2",
    ]  # fmt: skip
    assert named[2].overrides == (
        "quality.enabled=true", "evaluate.prompts=[a,b]", "shards.val_fraction=0.1",
    )  # fmt: skip
    assert expand(["x.y=[1,2],[3]"])[0].overrides == ("x.y=[1,2]",)


@pytest.mark.parametrize(
    ("grid", "variants", "seeds", "message"),
    [
        (["clean.min_words"], None, None, "--grid 'clean.min_words': expected"),
        (["clean.min_words=20"], None, None, "at least two variants"),
        (["clean.min_words=20,,50"], None, None, "an empty value"),
        (None, [["a", "x"], ["b"]], None, "--variant a 'x': expected section.key=value"),
        (None, [["a"], ["a"]], None, "two variants are named a"),
        (["clean.min_words=20,50"], None, "0,zero", "--seeds '0,zero'"),
    ],
)
def test_malformed_sweeps_are_config_errors(grid, variants, seeds, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        expand(grid, variants, seeds)


def test_a_bad_grid_key_is_a_config_error_naming_it(tmp_path, capsys):
    path = _sweep_config(tmp_path)
    with pytest.raises(ConfigError) as found:
        check_variants(str(path), expand(["clean.min_wrods=20,50"]))
    assert "--grid clean.min_wrods=20" in str(found.value)
    assert "clean.min_wrods: unknown key; did you mean `min_words`?" in str(found.value)
    # the command exits 2 with that line before any server starts or work dir is made
    code = cli_main(["sweep", str(path), "--grid", "clean.min_wrods=20,50",
                     "--workdir", str(tmp_path / "work")])  # fmt: skip
    assert code == 2
    assert "unknown key; did you mean `min_words`?" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
    code = cli_main(["sweep", str(path), "--grid", "clean.min_words=20,many"])
    assert code == 2
    assert "clean.min_words: Input should be a valid integer" in capsys.readouterr().err


def test_the_config_sweep_section_gives_the_same_variants_as_the_command_line(tmp_path, capsys):
    """`sweep:` in the config: its grid, variants and seeds are the command line's words (YAML
    values kept whole); it changes no fingerprint or config hash; a bad key in it exits 2 naming
    the key and the section, before anything runs."""
    from pipeline.config import config_hash, load_config
    from pipeline.dag import plan
    from pipeline.sweep import from_section

    path = _sweep_config(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["sweep"] = {
        "grid": {"train.learning_rate": [0.001, 0.003], "evaluate.prompts": [["a,b"], ["c"]]},
        "variants": {"rules": [], "quality": ["quality.enabled=true"]},
        "seeds": [0, 1],
        "metric": "reference_bpb",
    }
    with_sweep = tmp_path / "with-sweep.yaml"
    with_sweep.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(with_sweep)
    grid, variants, seeds = from_section(config.sweep)
    assert seeds == "0,1"
    from_config = expand(grid, variants, seeds)
    by_hand = expand(
        ["train.learning_rate=0.001,0.003", 'evaluate.prompts=["a,b"],["c"]'],
        [["rules"], ["quality", "quality.enabled=true"]],
        "0,1",
    )
    assert [v.all_overrides for v in from_config] == [v.all_overrides for v in by_hand]
    assert len(from_config) == 2 * 2 * 2 * 2
    assert check_variants(str(with_sweep), from_config[:1])[0].evaluate.prompts == ["a,b"]
    plain = load_config(path)
    assert config_hash(plain) == config_hash(config)
    fingerprints = [[p.output.fingerprint for p in plan(c, tmp_path)] for c in (plain, config)]
    assert fingerprints[0] == fingerprints[1]
    # A bad key in the section: exit 2, naming it and where the sweep came from.
    raw["sweep"] = {"grid": {"clean.min_wrods": [20, 50]}}
    with_sweep.write_text(yaml.safe_dump(raw, sort_keys=False))
    code = cli_main(["sweep", str(with_sweep), "--workdir", str(tmp_path / "work")])
    assert code == 2
    err = capsys.readouterr().err
    assert "clean.min_wrods: unknown key" in err and "the config's sweep: section" in err
    assert not (tmp_path / "work").exists()
    raw["sweep"] = {"grid": {"train.learning_rate": 0.1}}
    with_sweep.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert cli_main(["sweep", str(with_sweep)]) == 2
    assert "sweep.grid.train.learning_rate" in capsys.readouterr().err


def test_variants_share_one_token_budget_and_a_fixed_reference_text(tmp_path):
    path = _sweep_config(tmp_path)
    variants = expand(["train.max_steps=4,8"])
    with pytest.raises(ConfigError, match="same token budget"):
        check_same_budget(variants, check_variants(str(path), variants))
    variants = expand(["train.learning_rate=0.001,0.003"])
    assert check_same_budget(variants, check_variants(str(path), variants)) == 4 * 4 * 32
    configs = check_variants(
        str(path), expand(["evaluate.tasks=[{type: heldout}]", "train.seed=1,2"])
    )
    with pytest.raises(ConfigError, match="fixed reference text"):
        reference_metric(configs[0])
    assert reference_metric(check_variants(str(path), variants)[0]) == "reference_bpb"


def test_the_comparison_folds_seeds_into_mean_and_spread():
    rows = [
        {"variant": "a", "overrides": "x=1", "seed": 0, "clean_kept": 10, "ref_bpb": 2.0, "acc": 0.3},
        {"variant": "a", "overrides": "x=1", "seed": 1, "clean_kept": 10, "ref_bpb": 2.2, "acc": 0.5},
        {"variant": "b", "overrides": "x=2", "seed": 0, "clean_kept": 7, "ref_bpb": 1.9, "acc": 0.4},
        {"variant": "b", "overrides": "x=2", "seed": 1, "clean_kept": 7, "ref_bpb": 1.9, "acc": 0.2},
    ]  # fmt: skip
    table = compare(rows, "ref_bpb", "min")
    assert [r["variant"] for r in table] == ["b", "a"]  # lower bpb first
    a = table[1]
    assert a["seeds"] == 2 and a["clean_kept"] == 10
    assert a["ref_bpb"] == pytest.approx(2.1) and a["ref_bpb_std"] == pytest.approx(
        0.1414, abs=1e-4
    )
    assert table[0]["ref_bpb_std"] == 0.0
    assert [r["variant"] for r in compare(rows, "acc", "max")] == ["a", "b"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, prefect_server):
    from flows.sweep import sweep_flow

    tmp = tmp_path_factory.mktemp("sweep")
    path = _sweep_config(tmp)
    variants = expand(["tokenizer.vocab_size=300,360"])
    result = sweep_flow(str(path), [v.to_dict() for v in variants], workdir=str(tmp / "work"))
    return tmp, result


@pytest.mark.slow
def test_a_two_variant_sweep_runs_shared_stages_once(sweep):
    tmp, result = sweep
    # 2 variants: the data stages before the tokenizer ran once, the rest once per variant
    assert result["stage_executions"] == {
        "ingest": 1, "clean": 1, "dedup": 1, "tokenizer": 2, "shards": 2, "pretrain": 2,
        "evaluate": 2,
    }  # fmt: skip
    table = result["table"]
    assert sorted((r["variant"], r["overrides"], r["seeds"]) for r in table) == [
        ("vocab_size=300", "tokenizer.vocab_size=300", 1),
        ("vocab_size=360", "tokenizer.vocab_size=360", 1),
    ]
    for row in table:
        assert row["tokens_trained"] == 4 * 4 * 32  # the same budget for both
        assert row["clean_kept"] == table[0]["clean_kept"] > 0
        assert 0 < row["reference_bpb"] < 20 and row["reference_bpb_std"] >= 0
        assert row["val_bpb"] > 0  # the configured tasks' metrics too
    assert table[0]["reference_bpb"] <= table[1]["reference_bpb"]
    assert result["best"] == table[0]["variant"]


@pytest.mark.slow
def test_the_sweep_parent_run_has_the_table_the_plot_and_the_variants_nested(sweep):
    tmp, result = sweep
    client = MlflowClient(result["tracking_uri"])
    parent = result["mlflow_run_id"]
    assert client.get_run(parent).info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"sweep_table.json", "sweep.md", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent, "plots")] == ["plots/sweep_metric.png"]
    plot = Path(client.download_artifacts(parent, "plots/sweep_metric.png", str(tmp)))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads(
        Path(client.download_artifacts(parent, "sweep_table.json", str(tmp))).read_text()
    )
    assert len(table["data"]) == 2  # MLflow's table layout: columns and one row per variant
    children = client.search_runs(
        [result["experiment_id"]], f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert sorted(r.info.run_id for r in children) == sorted(
        r["mlflow_run_id"] for r in result["runs"]
    )
    assert {r.data.tags["llmpipe.sweep_variant"] for r in children} == {
        "vocab_size=300",
        "vocab_size=360",
    }
    card = Path(client.download_artifacts(parent, "sweep.md", str(tmp))).read_text()
    assert "| variant | overrides | seeds |" in card and "won on reference_bpb" in card


@pytest.mark.slow
def test_prefect_shows_the_variants_as_subflows_and_the_comparison(sweep):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    _, result = sweep
    parent = result["prefect_flow_run_id"]

    async def read():
        async with get_client() as client:
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
                )
            )
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[parent]))
            )
            return children, artifacts

    children, artifacts = asyncio.run(read())
    assert sorted(run.name for run in children) == [
        "quickstart · vocab_size=300",
        "quickstart · vocab_size=360",
    ]
    assert all(run.state.is_completed() for run in children)
    found = {a.key: a for a in artifacts}
    table = found["llmpipe-sweep"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["variant"] for r in rows] == [r["variant"] for r in result["table"]]
    assert "reference_bpb (mean ± std over seeds)" in found["llmpipe-sweep-summary"].data
