"""`llmpipe`: the command line.

  llmpipe run CONFIG [--workdir DIR] [--set section.key=value ...] [--only a,b | --from STAGE]
  llmpipe sweep CONFIG [--grid section.key=V1,V2 ...] [--variant NAME section.key=V ...]
               [--seeds 0,1] [--metric NAME] [--set ...] [--workdir DIR]
  llmpipe serve CONFIG [--cron "0 3 * * *"] [--timezone TZ] [--name NAME] [--run-once]
  llmpipe generate MODEL "prompt" [--max-new-tokens N] [--temperature T] [--top-k K] [--seed S]
                   [--repetition-penalty P]
  llmpipe eval MODEL [--config CONFIG] [--tasks a,b] [--limit N] [--out DIR] [--record]
  llmpipe export MODEL OUT_DIR
  llmpipe import HF_DIR OUT_DIR
  llmpipe models list [--name NAME] [--metrics]
  llmpipe models promote NAME VERSION [--reason TEXT]

MODEL is a checkpoint folder or an MLflow model URI such as `models:/llmpipe-gpt@champion`.
Without `--tracking-uri`, MLflow is `$MLFLOW_TRACKING_URI` or the SQLite store in the work dir.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Quiet, offline-friendly defaults; a user's own settings win.
for _key, _value in {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # MLflow prints run URLs (with any credentials in the tracking URI); the summary has them.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # Only what the pipeline says: no MLflow INFO notes ("Creating initial MLflow database
    # tables...") or artifact-download progress bars in the terminal.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # OpenMP threads sleep while they wait (pipeline/train/__main__.py says why).
    "OMP_WAIT_POLICY": "PASSIVE",
}.items():
    os.environ.setdefault(_key, _value)


def _tracking_uri(args: argparse.Namespace) -> str:
    from pipeline.tracking.runs import resolve_tracking_uri

    return resolve_tracking_uri(args.tracking_uri, Path(args.workdir or "work"))


def _print_summary(summary: dict[str, Any]) -> None:
    from flows.ui import print_summary

    print_summary(summary)


class Stopped(BaseException):
    """The run was asked to stop by a signal (SIGTERM here; Ctrl-C is KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise Stopped(signum)


TRACKING_KEY = "tracking.mlflow_tracking_uri"


def _credentials_to_environment(overrides: list[str]) -> list[str]:
    """Overrides without credentials: a tracking URI with `user:password@` goes into this
    process's $MLFLOW_TRACKING_URI (the config's value then set to null, so it is used), never
    into the flow run's parameters, which Prefect stores. Any other credential is refused."""
    from pipeline.config import ConfigError
    from pipeline.credentials import has_credentials

    kept = []
    for item in overrides:
        key, _, value = item.partition("=")
        if not has_credentials(value):
            kept.append(item)
        elif key.strip() == TRACKING_KEY:
            os.environ["MLFLOW_TRACKING_URI"] = value
            kept.append(f"{TRACKING_KEY}=null")
        else:
            raise ConfigError(
                f"--set {key}: the value holds credentials (user:password@), which would be "
                "stored with the run: pass them in the environment instead"
            )
    return kept


def cmd_run(args: argparse.Namespace) -> int:
    """Check everything the config names, then run the flow; stop cleanly on SIGTERM/Ctrl-C.

    Every config error (bad keys and values, a source that matches no file, an unknown stage in
    --only/--from) exits 2 before any server starts or any MLflow store is touched. SIGTERM and
    Ctrl-C stop the run within seconds: the trainer is stopped, the Prefect flow run ends
    Crashed, its MLflow runs KILLED, and the exit status is 128 + the signal (143, 130).
    """
    from pipeline.config import load_config
    from pipeline.dag import check_selection, stage_names
    from pipeline.ingest.files import require_source_files
    from pipeline.store import check_workdir

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None

    def check() -> list[str]:
        overrides = _credentials_to_environment(args.set or [])
        config = load_config(args.config, overrides)
        check_selection(stage_names(config), only, args.start)
        require_source_files(config)
        # s3:// needs s3fs; say so now
        check_workdir(args.workdir or config.workdir, config.run.mode == "incremental")
        return overrides

    def run(overrides: list[str]) -> dict:
        from flows.pipeline import pipeline_flow

        return pipeline_flow(
            config_path=str(Path(args.config).resolve()),
            workdir=args.workdir,
            overrides=overrides,
            only=only,
            start=args.start,
        )

    code, summary = _check_then_run_flow(check, run)
    if code == 0:
        _print_summary(summary)
    return code


def _check_then_run_flow(check: Callable[[], Any], run: Callable[[Any], Any]) -> tuple[int, Any]:
    """`check()` (config errors: exit 2 before any server starts), then Prefect (a running server
    or a temporary one) and `run(checked)`; SIGTERM and Ctrl-C stop it with 128 + the signal."""
    from pipeline.config import ConfigError

    previous = signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        try:
            checked = check()
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2, None
        from flows.stack import use_running_prefect_server

        # a server answering at the default address is used (no temporary one: 15-25 s saved);
        # else Prefect's temporary server starts in its own session, to outlive a signal to us
        use_running_prefect_server()
        from flows.local_server import start_local_server

        start_local_server()
        return 0, run(checked)
    except (Stopped, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        print(f"\nllmpipe: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum, None
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Check every variant's config, then run the sweep flow (flows/sweep.py); a bad grid key
    or value exits 2 naming it, before anything starts."""
    from pipeline.config import ConfigError, load_config
    from pipeline.ingest.files import require_source_files
    from pipeline.sweep import (
        check_same_budget,
        check_variants,
        expand,
        from_section,
        reference_metric,
    )

    def check() -> tuple[list[str], list, str | None, str | None]:
        overrides = _credentials_to_environment(args.set or [])
        grid, variant, seeds, metric, mode = (
            args.grid, args.variant, args.seeds, args.metric, args.mode
        )  # fmt: skip
        given = "the command line"
        if not grid and not variant:  # the config's own sweep: section
            section = load_config(args.config, overrides).sweep
            grid, variant, section_seeds = from_section(section)
            seeds, metric = seeds or section_seeds, metric or section.metric
            mode, given = mode or section.mode, "the config's sweep: section"
        try:
            variants = expand(grid, variant, seeds, overrides)
            configs = check_variants(args.config, variants)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (the sweep comes from {given})") from None
        check_same_budget(variants, configs)
        reference_metric(configs[0], metric)
        for config in configs:
            require_source_files(config)
        return overrides, variants, metric, mode

    def run(checked: tuple[list[str], list, str | None, str | None]) -> dict:
        from flows.sweep import sweep_flow

        overrides, variants, metric, mode = checked
        return sweep_flow(
            config_path=str(Path(args.config).resolve()),
            variants=[v.to_dict() for v in variants],
            workdir=args.workdir,
            base_overrides=overrides,
            metric=metric,
            mode=mode,
        )

    code, result = _check_then_run_flow(check, run)
    if code:
        return code
    from flows.ui import mlflow_run_url

    print(result["markdown"])
    url = mlflow_run_url(result["tracking_uri"], result["experiment_id"], result["mlflow_run_id"])
    print(f"\nMLflow sweep run: {url}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.deploy import pipeline_deployment, serve_pipeline
    from pipeline.config import ConfigError
    from pipeline.credentials import has_credentials

    try:
        for item in args.set or []:
            if has_credentials(item):  # a deployment's parameters are stored by Prefect
                raise ConfigError(
                    f"--set {item.partition('=')[0]}: the value holds credentials "
                    "(user:password@); give them to the worker in its environment "
                    "(MLFLOW_TRACKING_URI) instead"
                )
        deployment = pipeline_deployment(
            args.config,
            cron=args.cron or None,
            timezone=args.timezone,
            name=args.name,
            workdir=args.workdir,
            overrides=args.set or [],
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve_pipeline(deployment, run_once=args.run_once)
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
        repetition_penalty=args.repetition_penalty,
    )
    for text in texts:
        print(text)
        print()
    return 0


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

    sweep = sub.add_parser(
        "sweep",
        help="compare variants of a config (data recipes, training settings) on proxy models",
    )
    sweep.add_argument("config")
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="SECTION.KEY=V1,V2",
        help="values to try for a key; several --grid: every combination is a variant "
        "(without --grid and --variant: the config's sweep: section)",
    )
    sweep.add_argument(
        "--variant",
        action="append",
        nargs="+",
        metavar=("NAME", "SECTION.KEY=VALUE"),
        help="a named variant and its overrides (repeat for each variant)",
    )
    sweep.add_argument(
        "--seeds", metavar="S1,S2", help="train each variant once per seed (train.seed)"
    )
    sweep.add_argument(
        "--metric",
        help="metric to rank by (default: <task>_bpb of the first perplexity/wikitext2 task)",
    )
    sweep.add_argument("--mode", choices=("min", "max"), help="better is lower or higher")
    sweep.add_argument("--workdir", help="where stage outputs live (default: the config's workdir)")
    sweep.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override for every variant"
    )
    sweep.set_defaults(func=cmd_sweep)

    serve = sub.add_parser(
        "serve", help="serve the pipeline as a scheduled deployment (needs a Prefect server)"
    )
    serve.add_argument("config")
    serve.add_argument(
        "--cron", default="0 3 * * *", help='schedule (default "0 3 * * *"; "" for none)'
    )
    serve.add_argument("--timezone", default="UTC", help="time zone of the schedule")
    serve.add_argument("--name", help="deployment name (default: the config's name)")
    serve.add_argument("--workdir", help="where stage outputs live (default: the config's workdir)")
    serve.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value"
    )
    serve.add_argument(
        "--run-once", action="store_true", help="run what is due now, then exit (for cron jobs)"
    )
    serve.set_defaults(func=cmd_serve)

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
    gen.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 makes tokens already in the text less likely (1.2 suits the quickstart model)",
    )
    gen.set_defaults(func=cmd_generate)

    from flows.model_commands import add_model_commands

    add_model_commands(sub, common, _tracking_uri)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; as the program itself (no `argv`), a run stopped by a signal exits as
    soon as its records are written and the Prefect server is stopped (`_exit_stopped`)."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        # Config and input errors get one clear line; anything else keeps its traceback.
        from pipeline.config import ConfigError

        if isinstance(exc, (ConfigError, FileNotFoundError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    if argv is None and code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        _exit_stopped(code)
    return code


def _exit_stopped(code: int) -> None:
    """Send Prefect's last logs while its server still runs, run the exit handlers (Prefect's
    event workers, then its temporary server stops), then exit without the interpreter's
    teardown of every loaded module: seconds on a busy machine, while `docker stop` counts down
    to SIGKILL."""
    import atexit
    import logging

    logging.shutdown()  # Prefect's log handler drains to the server (atexit would do it after)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
