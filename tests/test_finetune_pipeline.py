"""Fine-tuning in the pipeline: quickstart-finetune (shrunk) through the real Prefect flow and
MLflow store, and fine-tuning from outside models (a Hugging Face GPT-2 folder with LoRA, a
registered model) without Prefect.

Checks what a user would: pretrain -> finetune -> evaluate -> register ran, the task metrics of
the fine-tuned model and of the model it started from are in the eval table, MLflow and the
Prefect artifacts, promotion used the configured task metric, and a re-run reuses every stage.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.pipeline import pipeline_flow
from pipeline.config import load_config
from pipeline.dag import plan, run_stage, select, stage_names
from pipeline.model.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "quickstart-finetune.yaml")
SHRINK = [
    "model.n_layer=2",
    "model.n_embd=64",
    "model.n_head=2",
    "model.block_size=192",
    "tokenizer.vocab_size=1024",
    "train.max_steps=20",
    "train.batch_size=4",
    "train.warmup_steps=5",
    "train.val_every_steps=10",
    "train.val_batches=2",
    "train.checkpoint_every_steps=10",
    "train.progress_bar=false",
    "finetune.train.max_steps=30",
    "finetune.train.batch_size=8",
    "finetune.train.val_every_steps=15",
    "finetune.train.val_batches=2",
    "finetune.train.checkpoint_every_steps=15",
    "finetune.train.progress_bar=false",
    "evaluate.val_batches=4",
    "evaluate.limit=40",
    "evaluate.max_new_tokens=8",
    "register.model_name=ft-e2e",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_server):
    workdir = tmp_path_factory.mktemp("work")
    first = pipeline_flow(CONFIG, workdir=str(workdir), overrides=SHRINK)
    again = pipeline_flow(CONFIG, workdir=str(workdir), overrides=SHRINK)
    return workdir, first, again


def test_pretrain_finetune_evaluate_register(runs):
    _, first, again = runs
    names = list(first["stages"])
    assert names == list(stage_names(load_config(CONFIG)))
    assert names[-4:] == ["pretrain", "finetune", "evaluate", "register"]
    assert all(r["cached"] for r in again["stages"].values())
    finetune = first["stages"]["finetune"]
    counts = finetune["counts"]["examples_by_task"]
    assert counts["sentiment"] == {"train": 3000, "eval": 550, "quarantined": 0}
    assert counts["squad"]["train"] + counts["squad"]["eval"] == 424
    assert finetune["metrics"]["steps"] == 30
    assert [e["task"] for e in finetune["examples"]] == ["sentiment", "squad"]  # shown in Prefect
    assert finetune["base_model"] == str(Path(first["stages"]["pretrain"]["output"]) / "final")
    final = Path(finetune["output"]) / "final"
    assert load_model(final).config.block_size == 192
    assert (final / "tokenizer.json").is_file()
    # what the model was trained and validated on is kept beside it
    held_out = (Path(finetune["output"]) / "examples" / "eval.jsonl").read_text().splitlines()
    assert len(held_out) == counts["sentiment"]["eval"] + counts["squad"]["eval"]


def test_task_metrics_before_and_after_in_the_eval_table(runs):
    _, first, _ = runs
    evaluation = first["stages"]["evaluate"]
    metrics = evaluation["metrics"]
    for prefix in ("", "base_"):
        assert 0 <= metrics[f"{prefix}sentiment_acc"] <= 1
        assert 0 <= metrics[f"{prefix}sentiment_macro_f1"] <= 1
        assert 0 <= metrics[f"{prefix}squad_f1"] <= 1
        assert 0 <= metrics[f"{prefix}squad_exact_match"] <= metrics[f"{prefix}squad_f1"]
    rows = {(r["task"], r["metric"]): r for r in evaluation["eval_table"]}
    assert rows[("sentiment", "acc")]["examples"] == 40  # evaluate.limit
    assert rows[("base_sentiment", "acc")]["examples"] == 40
    assert ("val", "bpb") in rows  # the held-out LM loss is still measured
    # the base rows score the pretrained model: its own evaluation gives the same number
    from pipeline.evaluate import run_evaluation

    config = load_config(CONFIG, SHRINK)
    again = run_evaluation(
        Path(first["stages"]["pretrain"]["output"]) / "final",
        config.evaluate,
        config.base_dir,
        Path(first["workdir"]) / "recheck",
        tasks=["sentiment"],
    )
    assert again["metrics"]["sentiment_acc"] == pytest.approx(metrics["base_sentiment_acc"])


def test_mlflow_has_the_finetune_run_and_task_metrics(runs):
    _, first, _ = runs
    client = MlflowClient(tracking_uri=first["tracking_uri"])
    parent = client.get_run(first["mlflow_run_id"])
    assert "sentiment_acc" in parent.data.metrics
    assert "base_sentiment_acc" in parent.data.metrics
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    by_stage = {r.data.tags["llmpipe.stage"]: r for r in children}
    assert "finetune" in by_stage
    history = client.get_metric_history(by_stage["finetune"].info.run_id, "train_loss")
    assert len(history) >= 2  # streamed by the Lightning logger while fine-tuning
    assert "val_loss" in by_stage["finetune"].data.metrics
    assert by_stage["finetune"].data.params["finetune.train.max_steps"] == "30"
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/finetune_before_after.png" in plots
    assert "plots/finetune" in plots  # the fine-tune's loss curve


def test_registered_by_the_task_metric(runs):
    _, first, _ = runs
    registered = first["stages"]["register"]["registered"]
    assert registered["metric"] == "sentiment_acc"
    assert registered["value"] == pytest.approx(
        first["stages"]["evaluate"]["metrics"]["sentiment_acc"]
    )
    client = MlflowClient(tracking_uri=first["tracking_uri"])
    version = client.get_model_version("ft-e2e", str(registered["version"]))
    assert (
        version.tags["llmpipe.finetune_fingerprint"]
        == Path(first["stages"]["finetune"]["output"]).name
    )
    assert client.get_model_version_by_alias("ft-e2e", "champion").version == version.version


def test_prefect_shows_the_finetune_stage_and_the_task_table(runs):
    _, first, _ = runs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[first["prefect_flow_run_id"]])
                )
            )

    artifacts = {a.key: a for a in asyncio.run(read())}
    assert "llmpipe-finetune" in artifacts
    assert "Fine-tuning: before and after" in artifacts["llmpipe-evaluate"].data
    table = artifacts["llmpipe-eval-table"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {"sentiment", "base_sentiment", "squad", "base_squad"} <= {r["task"] for r in rows}


def test_finetune_from_a_registered_model(runs, tmp_path):
    """`finetune.init_from: models:/NAME@champion` resolves to the version the alias names."""
    _, first, _ = runs
    from pipeline.finetune.stage import init_identity, resolve_base_model

    uri = first["tracking_uri"]
    config = load_config(CONFIG, [*SHRINK, "finetune.init_from=models:/ft-e2e@champion"])
    version = first["stages"]["register"]["registered"]["version"]
    assert init_identity(config, uri) == [f"init:models:/ft-e2e/{version}"]
    folder = resolve_base_model(config.finetune.init_from, None, tmp_path, uri)
    assert load_model(folder).config.block_size == 192
    # starting elsewhere, the pipeline has no data or pretraining stages
    assert list(stage_names(config)) == ["finetune", "evaluate", "register"]


def test_finetune_a_hugging_face_gpt2_folder_with_lora(tmp_path):
    """A GPT-2-format folder (here our tiny model exported) is imported and LoRA-tuned; the
    saved model is plain (adapters merged) and differs from where it started."""
    from tiny_models import save_tiny_model, train_tokenizer

    from pipeline.model.hf import export_hf

    tiny = save_tiny_model(tmp_path / "tiny", train_tokenizer(), activation="gelu_tanh")
    hf_dir = export_hf(tiny, tmp_path / "hf")
    config = load_config(
        CONFIG,
        [
            "sources=[]",
            f"finetune.init_from={hf_dir}",
            "finetune.lora={rank: 4, alpha: 8}",
            "finetune.tasks.0.limit=200",
            "finetune.tasks.1.limit=50",
            "finetune.train.max_steps=10",
            "finetune.train.batch_size=4",
            "finetune.train.val_every_steps=10",
            "finetune.train.val_batches=1",
            "finetune.train.checkpoint_every_steps=10",
            "finetune.train.progress_bar=false",
            "evaluate.tasks=[]",
            "evaluate.limit=10",
        ],
    )
    stages = plan(config, tmp_path / "work")
    assert [p.name for p in stages] == ["finetune", "evaluate", "register"]
    finetune = select(stages, only=["finetune"])[0]
    result = run_stage(finetune, config, log=lambda line: None)
    out = finetune.output.path
    assert result.details["base_model"] == "base"
    assert (out / "base" / "imported_from.json").is_file()
    metrics = result.metrics
    assert 0 < metrics["trainable_params"] < metrics["num_params"] / 5
    start, tuned = load_model(out / "base"), load_model(out / "final")
    assert start.state_dict().keys() == tuned.state_dict().keys()  # adapters merged away
    changed = [k for k, v in tuned.state_dict().items() if not v.equal(start.state_dict()[k])]
    assert changed and all(".attn." in k or ".mlp." in k for k in changed)


def test_the_gpu_config_reads_its_shared_task_data_on_a_tiny_model(tmp_path, shared_data):
    """configs/finetune-gpt2-124m.yaml end to end on the CPU with a tiny GPT-2 folder in place
    of the 124M checkpoint: every task's files, fields and templates work as configured."""
    from tiny_models import save_tiny_model, train_tokenizer

    from pipeline.model.hf import export_hf

    tiny = save_tiny_model(tmp_path / "tiny", train_tokenizer(), activation="gelu_tanh")
    hf_dir = export_hf(tiny, tmp_path / "hf")
    limits = [f"finetune.tasks.{i}.limit=40" for i in range(4)]
    config = load_config(
        REPO / "configs" / "finetune-gpt2-124m.yaml",
        [
            f"finetune.init_from={hf_dir}",
            *limits,
            "finetune.train.max_steps=2",
            "finetune.train.batch_size=2",
            "finetune.train.grad_accum_steps=1",
            "finetune.train.warmup_steps=1",
            "finetune.train.val_every_steps=2",
            "finetune.train.val_batches=1",
            "finetune.train.checkpoint_every_steps=2",
            "finetune.train.compile=false",
            "finetune.train.precision=32-true",
            "finetune.train.progress_bar=false",
            "evaluate.limit=3",
            "evaluate.max_new_tokens=4",
        ],
    )
    stages = {p.name: p for p in plan(config, tmp_path / "work")}
    assert list(stages) == ["finetune", "evaluate", "register"]
    finetune = run_stage(stages["finetune"], config, log=lambda line: None)
    counts = finetune.counts["examples_by_task"]
    assert set(counts) == {"sst2", "squad", "xsum", "multi30k_en_de"}
    assert all(
        c["train"] == 40 and c["eval"] > 0 and c["quarantined"] == 0 for c in counts.values()
    )
    evaluation = run_stage(stages["evaluate"], config, log=lambda line: None)
    metrics = evaluation.metrics
    for name in ("sst2_acc", "squad_f1", "xsum_rouge1", "multi30k_en_de_chrf"):
        assert name in metrics and f"base_{name}" in metrics


KILLABLE_STAGE = """
import sys
from pipeline.config import load_config
from pipeline.dag import plan, run_stage

config = load_config(sys.argv[1], sys.argv[3:])
stage = next(p for p in plan(config, sys.argv[2]) if p.name == "finetune")
result = run_stage(stage, config, log=lambda line: print(line, flush=True))
print("metrics", result.metrics["resumed_from_step"], result.metrics["steps"])
"""


def test_a_killed_finetune_stage_resumes_from_its_last_checkpoint(tmp_path):
    """SIGKILL the finetune stage's process after a checkpoint; the same command run again
    takes over the dead run's partial folder and continues from that checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tiny_models import save_tiny_model, train_tokenizer

    from pipeline.model.hf import export_hf

    tiny = save_tiny_model(tmp_path / "tiny", train_tokenizer(), activation="gelu_tanh")
    hf_dir = export_hf(tiny, tmp_path / "hf")
    script = tmp_path / "stage.py"
    script.write_text(KILLABLE_STAGE)
    command = [
        sys.executable,
        str(script),
        CONFIG,
        str(tmp_path / "work"),
        "sources=[]",
        f"finetune.init_from={hf_dir}",
        "finetune.tasks.0.limit=300",
        "finetune.tasks.1.limit=50",
        "finetune.train.max_steps=40",
        "finetune.train.batch_size=4",
        "finetune.train.val_every_steps=20",
        "finetune.train.val_batches=1",
        "finetune.train.checkpoint_every_steps=5",
        "finetune.train.progress_bar=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
    partial = tmp_path / "work" / "finetune"
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if list(partial.glob(".partial-*/checkpoints/step-000010/trainer_state.ckpt")):
            break
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read().decode()
    os.killpg(first.pid, signal.SIGKILL)  # the stage and its training process
    first.wait()
    assert not [p for p in partial.iterdir() if not p.name.startswith(".")]  # nothing published
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming from" in second.stdout
    resumed, steps = second.stdout.strip().splitlines()[-1].split()[1:]
    assert int(resumed) >= 10 and int(steps) == 40


def test_an_increment_of_a_finetune_pipeline_pretrains_from_the_champions_pretrained_weights(
    runs,
):
    """Incremental runs continue pretraining from the champion; with fine-tuning on, the
    champion is a fine-tune, so pretraining continues from the pretrained model under it."""
    from pipeline.incremental import _champion

    _, first, _ = runs
    config = load_config(CONFIG, SHRINK)
    pretrained = first["stages"]["pretrain"]["output"]
    start, state_from = _champion(config, first["tracking_uri"])
    assert start == str(Path(pretrained) / "final")
    assert state_from == pretrained  # where the optimizer state to carry over lives
    plain = load_config(CONFIG, [*SHRINK, "finetune.tasks=[]"])
    version = first["stages"]["register"]["registered"]["version"]
    assert _champion(plain, first["tracking_uri"]) == (f"models:/ft-e2e/{version}", pretrained)
