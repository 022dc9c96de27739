"""Run ingest -> clean -> dedup of a config through the real DAG (`pipeline.dag.plan` and
`run_stage`), as `llmpipe run --only ingest,clean,dedup` does without Prefect and MLflow.

    python tests/hostile/run_stages.py CONFIG [WORKERS]

Prints one JSON line: each stage's output folder, the seconds it took, and this process's peak
resident memory and that of the largest process it started (the extraction worker), in bytes.
The hostile-corpus test runs it in a subprocess, to bound its time and measure its memory.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from pipeline.config import load_config
from pipeline.dag import plan, run_stage
from pipeline.parallel import make_executor

STAGES = ("ingest", "clean", "dedup")


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    planned = {p.name: p for p in plan(config, Path(config.workdir))}
    outputs, seconds = {}, {}
    with make_executor(workers) as executor:
        for name in STAGES:
            started = time.perf_counter()
            run_stage(
                planned[name],
                config,
                log=lambda line: print(line, file=sys.stderr),
                executor=executor,
            )
            seconds[name] = round(time.perf_counter() - started, 2)
            outputs[name] = str(planned[name].output.path)
    kib = 1024  # ru_maxrss is in KiB on Linux
    print(
        json.dumps(
            {
                "outputs": outputs,
                "seconds": seconds,
                "peak_rss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
                "peak_rss_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
            }
        )
    )


if __name__ == "__main__":
    main()
