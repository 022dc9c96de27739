"""`python -m pipeline.train REQUEST.json`: run (or resume) one pretraining job.

In: the path of a TrainRequest JSON file (pipeline/train/request.py).
Out: the files run_training writes under the request's out_dir; progress lines on stdout; exit
status 0 on success, 1 with a one-line reason on stderr on failure, 2 on bad usage.
"""

from __future__ import annotations

import os
import sys
import traceback

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
        return 130
    except Exception as exc:  # one clear line last, after the traceback for debugging
        traceback.print_exc()
        print(f"train failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
