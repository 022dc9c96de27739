"""The finetune stage: a starting model and task files in, a fine-tuned model folder out.

In: the `finetune` config section (tasks, where to start, packing, LoRA, train settings), the
pipeline's pretrain output (when `init_from` is not given), the stage's partial folder.
Out, in that folder:
  - `base/`: the starting model, when it was imported from a Hugging Face folder;
  - `examples/train.jsonl`, `examples/eval.jsonl`: the (prompt, response) pairs of every task,
    train and held-out parts, as trained on and validated on; `_quarantine.jsonl` for records
    that could not be used;
  - what training writes (checkpoints/, final/, train_metrics.json, loss_curve.png): the same
    trainer, checkpointing, resume and MLflow logging as pretraining (`python -m pipeline.train`).
The manifest body records per-task example counts, the train metrics and `base_model`, the
folder the fine-tune started from (relative to the stage output when it lives inside it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, task_name
from pipeline.quarantine import QUARANTINE_FILE, Quarantine

Log = Callable[[str], None]
BASE_FOLDER = "base"


def is_hf_folder(path: Path) -> bool:
    """A Hugging Face model folder (config.json) that is not one of ours (model_config.json)."""
    return (path / "config.json").is_file() and not (path / "model_config.json").is_file()


def resolve_base_model(
    init_from: str | None, pretrain_out: Path | None, out: Path, tracking_uri: str | None
) -> Path:
    """The model folder fine-tuning starts from (importing a Hugging Face folder into out/base)."""
    from pipeline.generate import resolve_model_dir

    if init_from is None:
        if pretrain_out is None:
            raise RuntimeError("finetune needs the pretrain output or finetune.init_from")
        return pretrain_out / "final"
    local = Path(init_from)
    if "://" not in init_from and local.is_dir() and is_hf_folder(local):
        from pipeline.model.hf import import_hf_model

        target = out / BASE_FOLDER
        if not (target / "model.safetensors").is_file():  # a resumed attempt has it already
            import_hf_model(local, out / ".tmp-base")
            (out / ".tmp-base").rename(target)
        return target
    return resolve_model_dir(init_from, tracking_uri)


def init_identity(config: PipelineConfig, tracking_uri: str | None) -> list[str]:
    """What the starting model is, for the stage fingerprint: a registry alias is resolved to
    its version (the alias moves), a local folder adds its weight files' sizes and times."""
    spec = config.finetune.init_from
    if spec is None:
        return []
    if spec.startswith("models:/") and "@" in spec and tracking_uri:
        from pipeline.model_uris import registered_version

        try:
            version = registered_version(spec, tracking_uri)
            return [f"init:models:/{version.name}/{version.version}"]
        except Exception:  # not registered (yet): the stage will fail with the registry's error
            return [f"init:{spec}"]
    local = Path(spec)
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.suffix in (".safetensors", ".json", ".bin"))
        return [f"init:{local.resolve()}"] + [
            f"{p.relative_to(local)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files
        ]
    return [f"init:{spec}"]


def prepare_examples(
    config: PipelineConfig, out: Path, log: Log = print
) -> dict[str, dict[str, int]]:
    """Write examples/train.jsonl and examples/eval.jsonl; return counts per task."""
    from pipeline.finetune.examples import read_splits

    folder = out / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    (out / QUARANTINE_FILE).unlink(missing_ok=True)  # a resumed attempt reads the files again
    counts: dict[str, dict[str, int]] = {}
    splits: dict[str, list[Any]] = {"train": [], "eval": []}
    with Quarantine(out) as quarantine:
        for task in config.finetune.tasks:
            name = task_name(task)
            before = sum(quarantine.counts.values())
            train, held_out = read_splits(task, config.base_dir, quarantine)
            splits["train"] += train
            splits["eval"] += held_out
            counts[name] = {
                "train": len(train),
                "eval": len(held_out),
                "quarantined": sum(quarantine.counts.values()) - before,
            }
            log(
                f"finetune: {name}: {len(train)} train, {len(held_out)} held-out examples, "
                f"{counts[name]['quarantined']} records quarantined"
            )
    for split, examples in splits.items():
        tmp = folder / f".{split}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(json.dumps(asdict(example), ensure_ascii=False) + "\n")
        tmp.rename(folder / f"{split}.jsonl")
    return counts


def first_examples(path: Path, chars: int = 300) -> list[dict[str, str]]:
    """The first training example of each task, shortened: what the Prefect page shows."""
    seen: dict[str, dict[str, str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["task"] not in seen:
                prompt = (
                    row["prompt"] if len(row["prompt"]) <= chars else "..." + row["prompt"][-chars:]
                )
                seen[row["task"]] = {
                    "task": row["task"],
                    "prompt": prompt,
                    "response": row["response"][:chars],
                }
    return list(seen.values())


def run_finetune_stage(
    config: PipelineConfig,
    pretrain_out: Path | None,
    out: Path,
    tracking_uri: str | None,
    mlflow_run_id: str | None,
    log: Log,
    launch: Callable[[Path, Log, str | None, dict[str, str]], None],
) -> dict[str, Any]:
    from pipeline.model.checkpoint import load_config
    from pipeline.train.request import SFTData, TrainRequest

    ft = config.finetune
    base = resolve_base_model(ft.init_from, pretrain_out, out, tracking_uri)
    log(f"finetune: starting from {base}")
    counts = prepare_examples(config, out, log)
    gpt_config = load_config(base)
    request = TrainRequest(
        model=gpt_config,  # the base model's exact shape: fine-tuning continues it
        train=ft.train,
        data=SFTData(
            examples_dir=str(out / "examples"),
            packing=ft.packing,
            weights={task_name(t): t.weight for t in ft.tasks},
        ),
        out_dir=str(out),
        tokenizer_path=str(base / "tokenizer.json"),
        init_from=str(base),
        lora=ft.lora,
        mlflow_tracking_uri=tracking_uri,
        mlflow_run_id=mlflow_run_id,
    )
    request_path = out / "train_request.json"
    request.to_json(request_path)  # without credentials; they go by environment
    launch(request_path, log, ft.train.launcher, request.environment())
    metrics = json.loads((out / "train_metrics.json").read_text())
    inside = base.is_relative_to(out)
    return {
        "metrics": metrics,
        "counts": {"examples_by_task": counts},
        "examples": first_examples(out / "examples" / "train.jsonl"),
        "base_model": str(base.relative_to(out)) if inside else str(base),
        "init_from": ft.init_from or "pretrain",
        "files": {"model": "final", "loss_curve": "loss_curve.png", "examples": "examples"},
    }


def base_model_dir(finetune_out: Path) -> Path:
    """The model a finished fine-tune started from (for the base-vs-fine-tuned comparison)."""
    from pipeline.outputs import read_result

    base = Path(read_result(finetune_out).details["base_model"])
    return base if base.is_absolute() else finetune_out / base
