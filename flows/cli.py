"""`llmpipe`: the command line.

  llmpipe run CONFIG [--workdir DIR] [--set section.key=value ...] [--only a,b | --from STAGE]
  llmpipe generate MODEL "prompt" [--max-new-tokens N] [--temperature T] [--top-k K] [--seed S]
  llmpipe models list [--name NAME]
  llmpipe models promote NAME VERSION

MODEL is a checkpoint folder or an MLflow model URI such as `models:/llmpipe-gpt@champion`.
Without `--tracking-uri`, MLflow is `$MLFLOW_TRACKING_URI` or the SQLite store in the work dir.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

# Quiet, offline-friendly defaults; a user's own settings win.
for _key, _value in {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}.items():
    os.environ.setdefault(_key, _value)


def _tracking_uri(args: argparse.Namespace) -> str:
    from pipeline.tracking.runs import resolve_tracking_uri

    return resolve_tracking_uri(args.tracking_uri, Path(args.workdir or "work"))


def _print_summary(summary: dict[str, Any]) -> None:
    stages = summary["stages"]
    states = ", ".join(f"{n} {'cached' if r['cached'] else 'ran'}" for n, r in stages.items())
    uri = summary["tracking_uri"]
    print()
    print(f"Pipeline finished in {summary['seconds']:.1f} s ({states})")
    print(f"  work dir:     {summary['workdir']}")
    print(
        f"  MLflow run:   {summary['mlflow_run_id']} (experiment {summary['experiment_id']}, {uri})"
    )
    print(f"  Prefect run:  {summary['prefect_flow_run_id']}")
    registered = (stages.get("register") or {}).get("registered")
    if registered:
        from pipeline.tracking.registry import list_versions

        rows = list_versions(uri, registered["model_name"])
        aliases = next(
            (r["aliases"] for r in rows if str(r["version"]) == str(registered["version"])), ""
        )
        print(
            f"  registered:   {registered['model_name']} version {registered['version']} "
            f"(aliases: {aliases or 'none'}; {registered['metric']} = {registered['value']:.4f})"
        )
    evaluation = stages.get("evaluate")
    if evaluation:
        metrics = evaluation.get("metrics", {})
        print(
            "  evaluation:   "
            + ", ".join(
                f"{k} {metrics[k]:.4f}" for k in ("val_loss", "val_ppl", "val_bpb") if k in metrics
            )
        )
        print("  samples:")
        for row in evaluation.get("generations", [])[:3]:
            print(f"    - {row['text'][:160]!r}")
    print("\nLook around:")
    if registered:
        print(
            f'  llmpipe generate "models:/{registered["model_name"]}@champion" "The history of" '
            f"--workdir {summary['workdir']}"
        )
    if uri.startswith("sqlite:"):
        print(f"  mlflow ui --backend-store-uri {uri}")
        print(
            f"    then http://127.0.0.1:5000/#/experiments/{summary['experiment_id']}/runs/{summary['mlflow_run_id']}"
        )
    print("  prefect server start")
    print(f"    then http://127.0.0.1:4200/runs/flow-run/{summary['prefect_flow_run_id']}")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config

    overrides = args.set or []
    try:
        load_config(args.config, overrides)  # fail fast, before any server starts
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from flows.pipeline import pipeline_flow

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    summary = pipeline_flow(
        config_path=str(Path(args.config).resolve()),
        workdir=args.workdir,
        overrides=overrides,
        only=only,
        start=args.start,
    )
    _print_summary(summary)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generate import generate_texts, load_generator

    net, tokenizer = load_generator(args.model, _tracking_uri(args))
    texts = generate_texts(
        net,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        seed=args.seed,
    )
    for text in texts:
        print(text)
        print()
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from pipeline.tracking.registry import list_versions, promote

    uri = _tracking_uri(args)
    if args.models_command == "promote":
        promote(uri, args.name, args.version)
        print(f"{args.name} version {args.version} is now @champion")
        return 0
    rows = list_versions(uri, args.name)
    if not rows:
        print(f"no registered models in {uri}")
        return 0
    from rich.console import Console
    from rich.table import Table

    columns = list(dict.fromkeys(k for row in rows for k in row if k not in ("run_id", "created")))
    table = Table(title=f"Model registry ({uri})")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    Console(width=200).print(table)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() else f"{number:.4f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmpipe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline DAG")
    run.add_argument("config")
    run.add_argument("--workdir", help="where stage outputs live (default: the config's workdir)")
    run.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value"
    )
    part = run.add_mutually_exclusive_group()
    part.add_argument("--only", metavar="STAGE[,STAGE]", help="run only these stages")
    part.add_argument(
        "--from", dest="start", metavar="STAGE", help="run this stage and those after it"
    )
    run.set_defaults(func=cmd_run)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", help="MLflow tracking URI")
    common.add_argument("--workdir", help="work dir whose mlflow.db to use (default: ./work)")

    gen = sub.add_parser("generate", parents=[common], help="generate text from a model")
    gen.add_argument("model", help="checkpoint folder or MLflow URI (models:/NAME@champion)")
    gen.add_argument("prompt", nargs="+")
    gen.add_argument("--max-new-tokens", type=int, default=50)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=50)
    gen.add_argument("--seed", type=int, default=None)
    gen.set_defaults(func=cmd_generate)

    models = sub.add_parser("models", help="the model registry")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    lst = models_sub.add_parser("list", parents=[common], help="registered versions as a table")
    lst.add_argument("--name")
    lst.set_defaults(func=cmd_models)
    pro = models_sub.add_parser("promote", parents=[common], help="set @champion to a version")
    pro.add_argument("name")
    pro.add_argument("version")
    pro.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        # Config and input errors get one clear line; anything else keeps its traceback.
        from pipeline.config import ConfigError

        if isinstance(exc, (ConfigError, FileNotFoundError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
