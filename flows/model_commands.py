"""The llmpipe commands that work on trained models: eval, export, import and models.

  llmpipe eval MODEL [--config CONFIG] [--tasks a,b] [--limit N] [--set evaluate.k=v ...]
                     [--shards DIR] [--out DIR] [--record]
  llmpipe export MODEL OUT_DIR          # a Hugging Face folder (AutoModelForCausalLM)
  llmpipe import HF_DIR OUT_DIR         # a Hugging Face GPT-2 / Llama folder -> our model folder
  llmpipe models list [--name NAME] [--metrics]
  llmpipe models promote NAME VERSION [--alias champion] [--reason TEXT]
  llmpipe serve-model MODEL [--host 127.0.0.1] [--port 8000] [--compare challenger] ...

MODEL is a checkpoint folder or an MLflow model URI (`models:/NAME@champion`, `models:/NAME/3`).
`eval` runs the tasks of the config's `evaluate` section (the defaults without `--config`);
`--tasks` picks some of them by name.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isinf(number) or math.isnan(number):
        return str(number)
    return str(int(number)) if number.is_integer() else f"{number:.4f}"


def _print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(v) for v in row])
    Console(width=200).print(table)


# ------------------------------------------------------------------------------------- eval


def load_eval_config(args: argparse.Namespace) -> tuple[Any, str, str]:
    """(evaluate config, base dir for task paths, experiment) from --config/--set/--limit."""
    from pipeline.config import load_config, validate_config

    overrides = list(args.set or [])
    if args.limit:
        overrides.append(f"evaluate.limit={args.limit}")
    if args.config:
        config = load_config(args.config, overrides)
    else:
        from pipeline.config import apply_overrides

        # Only the evaluate section matters here; the placeholder source is never read.
        raw = {"sources": [{"type": "text", "path": "."}], "base_dir": os.getcwd()}
        config = validate_config(apply_overrides(raw, overrides))
    return config.evaluate, config.base_dir, config.tracking.experiment


def cmd_eval(args: argparse.Namespace, tracking_uri: Callable[[argparse.Namespace], str]) -> int:
    from pipeline.evaluate.standalone import evaluate_named_model

    cfg, base_dir, experiment = load_eval_config(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    result = evaluate_named_model(
        args.model,
        cfg,
        base_dir,
        tracking_uri(args),
        tasks=tasks,
        shards_dir=Path(args.shards) if args.shards else None,
        out_dir=Path(args.out) if args.out else None,
        record=args.record,
        experiment=experiment,
    )
    rows = []
    for row in result["table"]:
        value = row["value"] if row["value"] is not None else row["note"]
        stderr = f"± {row['stderr']:.4f}" if row["stderr"] is not None else ""
        rows.append([row["task"], row["metric"], value, stderr, row["examples"]])
    _print_table(
        f"Evaluation of {args.model}", ["task", "metric", "value", "stderr", "examples"], rows
    )
    methods = dict.fromkeys((r["task"], r["method"]) for r in result["table"] if r["method"])
    for task, method in methods:
        print(f"  {task}: {method}")
    for row in result["generations"]:
        print(f"  sample: {row['text'][:200]!r}")
    if result["quarantined"]:
        print(f"  quarantined records: {result['quarantined']} (see {result['out_dir']})")
    print(f"  files: {result['out_dir']}")
    recorded = result.get("recorded")
    if recorded:
        where = f" and the tags of {recorded['version']}" if recorded.get("version") else ""
        print(f"  recorded in MLflow run {recorded['run_id']}{where}")
    return 0


# ---------------------------------------------------------------------------- export/import


def cmd_export(args: argparse.Namespace, tracking_uri: Callable[[argparse.Namespace], str]) -> int:
    from transformers.utils import logging as hf_logging

    from pipeline.generate import resolve_model_dir
    from pipeline.model.hf import export_hf

    hf_logging.disable_progress_bar()
    out = export_hf(resolve_model_dir(args.model, tracking_uri(args)), args.out_dir)
    print(f"wrote a Hugging Face model folder: {out}")
    print(
        "  from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"  model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"  tokenizer = AutoTokenizer.from_pretrained({str(out)!r})"
    )
    return 0


def cmd_import(args: argparse.Namespace, tracking_uri: Callable[[argparse.Namespace], str]) -> int:
    from transformers.utils import logging as hf_logging

    from pipeline.model.hf import import_hf_model

    hf_logging.disable_progress_bar()
    out = import_hf_model(args.hf_dir, args.out_dir)
    print(f"wrote an llmpipe model folder: {out}")
    print(f'  llmpipe generate {out} "Once upon a time"')
    return 0


# ----------------------------------------------------------------------------------- models

SUMMARY_TAGS = {
    "llmpipe.data_fingerprint": "data",
    "llmpipe.tokenizer_fingerprint": "tokenizer",
    "llmpipe.config_hash": "config",
    "llmpipe.git_commit": "git",
    "llmpipe.promotion": "promotion rule",
}


def cmd_models(args: argparse.Namespace, tracking_uri: Callable[[argparse.Namespace], str]) -> int:
    from pipeline.tracking.registry import list_versions, promote

    uri = tracking_uri(args)
    if args.models_command == "promote":
        previous = promote(uri, args.name, args.version, args.reason, args.alias)
        was = f" (it was v{previous})" if previous and previous != str(args.version) else ""
        print(f"{args.name} version {args.version} is now @{args.alias}{was}")
        return 0
    rows = list_versions(uri, args.name, metrics_only=args.metrics)
    if not rows:
        print(f"no registered models in {uri}")
        return 0
    fixed = ["name", "version", "aliases"]
    if args.metrics:
        names = sorted({k for row in rows for k in row} - {*fixed, "run_id", "created"})
        # The held-out numbers first, then the tasks alphabetically.
        names.sort(key=lambda k: (not k.startswith("val_"), k))
        table = [[row.get(c) for c in fixed + names] for row in rows]
        _print_table(f"Model registry, eval metrics ({uri})", fixed + names, table)
        return 0
    table = []
    for row in rows:
        values = [row.get(tag, "") for tag in SUMMARY_TAGS]
        values[3] = str(values[3])[:10]  # a short commit
        table.append([row[c] for c in fixed] + values)
    _print_table(f"Model registry ({uri})", fixed + list(SUMMARY_TAGS.values()), table)
    return 0


# ------------------------------------------------------------------------------ serve-model


def cmd_serve_model(
    args: argparse.Namespace, tracking_uri: Callable[[argparse.Namespace], str]
) -> int:
    from pipeline.serve.app import ADMIN_TOKEN_ENV, build_server, run_server

    if args.compare is None:  # an alias is compared with @challenger by default
        compare = (
            ["challenger"] if "@" in args.model and not args.model.endswith("@challenger") else []
        )
    else:
        compare = [a.strip() for a in args.compare.split(",") if a.strip() not in ("", "none")]
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {args.host}: anyone who reaches this port can use the models "
            "(the API has no authentication; put it behind a proxy with TLS and auth)"
        )
    server = build_server(
        args.model,
        tracking_uri(args),
        compare,
        concurrency=args.max_concurrency,
        queue=args.max_queue,
        poll_seconds=args.poll_seconds or None,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None,
        device=args.device,
        default_max_tokens=args.default_max_tokens,
    )
    for line in server.models.describe():
        print(f"serving {line['id']} ({line['source']})")
    print(f"  page http://{args.host}:{args.port}/   OpenAI API http://{args.host}:{args.port}/v1")
    run_server(server, args.host, args.port)
    return 0


# ----------------------------------------------------------------------------------- parser


def add_model_commands(
    sub: Any,
    common: argparse.ArgumentParser,
    tracking_uri: Callable[[argparse.Namespace], str],
) -> None:
    """Add eval, export, import and models to the llmpipe parser."""

    def bind(command: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: command(args, tracking_uri)

    ev = sub.add_parser("eval", parents=[common], help="evaluate a checkpoint or registry URI")
    ev.add_argument("model", help="checkpoint folder or MLflow URI (models:/NAME@champion)")
    ev.add_argument("--config", help="a pipeline config whose evaluate section to use")
    ev.add_argument("--tasks", metavar="NAME[,NAME]", help="run only these configured tasks")
    ev.add_argument("--limit", type=int, help="at most N examples per file task")
    ev.add_argument("--set", action="append", metavar="evaluate.KEY=VALUE")
    ev.add_argument("--shards", help="val token shards folder, for the held-out task")
    ev.add_argument("--out", help="where to write the table and details (default: a temp dir)")
    ev.add_argument(
        "--record",
        action="store_true",
        help="log an MLflow run; for a registered version, also tag it with the metrics",
    )
    ev.set_defaults(func=bind(cmd_eval))

    ex = sub.add_parser("export", parents=[common], help="write a Hugging Face model folder")
    ex.add_argument("model", help="checkpoint folder or MLflow URI (models:/NAME@champion)")
    ex.add_argument("out_dir")
    ex.set_defaults(func=bind(cmd_export))

    im = sub.add_parser("import", help="a local Hugging Face GPT-2/Llama folder -> model folder")
    im.add_argument("hf_dir")
    im.add_argument("out_dir")
    im.set_defaults(func=bind(cmd_import))

    models = sub.add_parser("models", help="the model registry")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    lst = models_sub.add_parser("list", parents=[common], help="registered versions as a table")
    lst.add_argument("--name")
    lst.add_argument(
        "--metrics", action="store_true", help="compare the versions' eval metrics instead"
    )
    lst.set_defaults(func=bind(cmd_models))
    pro = models_sub.add_parser("promote", parents=[common], help="set @champion to a version")
    pro.add_argument("name")
    pro.add_argument("version")
    pro.add_argument("--alias", default="champion", help="the alias to move (default champion)")
    pro.add_argument("--reason", help="why; recorded in the version's tags")
    pro.set_defaults(func=bind(cmd_models))

    sm = sub.add_parser(
        "serve-model",
        parents=[common],
        help="serve a model over an OpenAI-compatible API, with a page to try it",
    )
    sm.add_argument("model", help="models:/NAME@champion, models:/NAME/VERSION or a folder")
    sm.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sm.add_argument("--port", type=int, default=8000)
    sm.add_argument(
        "--compare",
        help="other aliases to serve beside it, e.g. challenger (default: challenger for an "
        "alias URI; 'none' for none)",
    )
    sm.add_argument(
        "--poll-seconds",
        type=float,
        default=30.0,
        help="how often to check whether an alias moved (0: only at POST /admin/reload)",
    )
    sm.add_argument("--max-concurrency", type=int, default=2, help="generations at once")
    sm.add_argument(
        "--max-queue", type=int, default=16, help="requests that may wait; more get HTTP 429"
    )
    sm.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    sm.add_argument(
        "--default-max-tokens",
        type=int,
        default=256,
        help="chat completion length when a request sets none (capped by the context)",
    )
    sm.set_defaults(func=bind(cmd_serve_model))
