"""`python -m pipeline.train REQUEST.json`: run (or resume) one pretraining job.

In: the path of a TrainRequest JSON file (pipeline/train/request.py).
Out: the files run_training writes under the request's out_dir; progress lines on stdout; exit
status 0 on success, 1 with a one-line reason on stderr on failure, 2 on bad usage, 130 / 143
when stopped by Ctrl-C / SIGTERM (the latest checkpoint stays; the same command resumes).
"""

from __future__ import annotations

import os
import sys
import traceback

STOPPED_BY_SIGINT, STOPPED_BY_SIGTERM = 130, 143

# OpenMP threads that wait for work sleep instead of spinning. On a machine shared with another
# busy process, spinning threads take the cores the working ones need: a 2-core laptop trained
# the quickstart model 6x slower with one other CPU-bound process than with this (measured:
# 225-293 against 1,721 tokens/s). Set before torch loads OpenMP; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m pipeline.train REQUEST.json", file=sys.stderr)
        return 2
    try:
        from pipeline.train.pretrain import run_training
        from pipeline.train.request import TrainRequest

        run_training(TrainRequest.from_json(args[0]))
    except KeyboardInterrupt:
        print("train: interrupted", file=sys.stderr)
        return STOPPED_BY_SIGINT
    except SystemExit as exc:
        # Lightning stops at the next step on SIGTERM with SIGTERMException, a SystemExit
        # without a code (no success: there is no final model), and on Ctrl-C with exit(1).
        if type(exc).__name__ == "SIGTERMException":
            print("train: stopped by SIGTERM", file=sys.stderr)
            return STOPPED_BY_SIGTERM
        if isinstance(exc.__context__, KeyboardInterrupt):
            print("train: interrupted", file=sys.stderr)
            return STOPPED_BY_SIGINT
        raise
    except Exception as exc:  # one clear line last, after the traceback for debugging
        traceback.print_exc()
        print(f"train failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown of torch, Lightning and MLflow (seconds on a busy
    machine): after a stop signal everything worth keeping is on disk already (checkpoints are
    written whole), and whoever sent the signal is waiting."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if code in (STOPPED_BY_SIGINT, STOPPED_BY_SIGTERM):
        exit_now(code)
    sys.exit(code)
