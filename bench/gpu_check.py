"""The GPU path in one command: throughput and MFU of the 124M GPT-2, the Shakespeare-char GPU
config against nanoGPT, fine-tuning a 124M GPT-2 (full and LoRA), checkpoint/resume on CUDA, and
the speed levers, within a time budget.

    bash bench/gpu_check.sh                       # a GPU machine: install what is missing, run
    python bench/gpu_check.py [--budget 540] [--only throughput,resume] [--nanogpt DIR]
    python bench/gpu_check.py --tiny --out /tmp/gpu_check.md   # the same code on the CPU (CI)

In: the project's configs (gpt2-small, shakespeare-char-gpu, finetune-gpt2-124m), the shared
data beside the checkout (Tiny Shakespeare and the fine-tuning task files), optionally a nanoGPT
checkout to time the reference side by side.
Out: a markdown report, printed and written to bench/results/gpu_check_<gpu>.md (`--out`), with
a summary per part, the goals met or not, and each part's tables; the full log and the numbers
as JSON beside it, and all three copied into $OUT when that is set (the device tool's folder).

Each part (bench/gpu_parts.py) runs in its own process, in priority order, with a time limit;
a part that fails is reported loudly and the rest still run; a part that no longer fits in the
budget is reported as not run (run it later with --only). Exit status: 0 when every part ran and
passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    seconds: int  # expected on an H100/H200-class GPU: a part is not started with less left
    limit: int  # at most this long, whatever is left


# Priority order: what the issue asks first runs first.
PARTS = [
    Part("environment", "Environment", 15, 90),
    Part("throughput", "Throughput: gpt2-small, our trainer vs a plain loop", 90, 240),
    Part("shakespeare", "Shakespeare-char GPU config (our llama recipe)", 90, 240),
    Part("nanogpt", "Shakespeare-char reference (nanoGPT's config)", 90, 240),
    Part("resume", "Checkpoint and resume on CUDA", 45, 180),
    Part("finetune", "Fine-tuning a 124M GPT-2 (full and LoRA)", 120, 330),
    Part("batch_size", "Lever: micro-batch size", 45, 150),
    Part("tf32", "Lever: TF32 off", 45, 150),
    Part("max_autotune", "Lever: torch.compile max-autotune", 120, 300),
]


@dataclass
class Outcome:
    part: Part
    status: str  # ok, FAILED, TIMED OUT, not run
    seconds: float = 0.0
    found: dict | None = None
    log_tail: str = ""


def run_part(part: Part, args: argparse.Namespace, limit: float, work: Path, log: Path) -> Outcome:
    """The part in its own process group (so that a time-out also stops its children), its
    output streamed to our stdout and appended to the log."""
    result = work / f"{part.name}.json"
    command = [sys.executable, "-u", str(HERE / "gpu_parts.py"), part.name, str(result)]
    command += ["--work", str(work / part.name)]
    if args.tiny:
        command.append("--tiny")
    if args.nanogpt:
        command += ["--nanogpt", str(args.nanogpt)]
    command += ["--deadline", str(time.time() + limit - 5)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    tail: list[str] = []
    started = time.perf_counter()
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n===== {part.name} (limit {limit:.0f} s)\n")
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )

        def pump() -> None:
            for line in process.stdout:
                handle.write(line)
                handle.flush()
                print(f"[{part.name}] {line}", end="", flush=True)
                tail.append(line)
                del tail[:-40]

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=10)
    seconds = time.perf_counter() - started
    text = "".join(tail)
    if process.returncode == -signal.SIGKILL and seconds >= limit:
        return Outcome(part, "TIMED OUT", seconds, log_tail=text)
    if process.returncode != 0 or not result.is_file():
        return Outcome(part, f"FAILED (exit {process.returncode})", seconds, log_tail=text)
    return Outcome(part, "ok", seconds, json.loads(result.read_text(encoding="utf-8")))


def report(outcomes: list[Outcome], args: argparse.Namespace, total: float) -> str:
    env = next((o.found for o in outcomes if o.part.name == "environment" and o.found), None)
    where = env["summary"] if env else "environment not recorded"
    command = "python bench/gpu_check.py " + " ".join(sys.argv[1:])
    lines = [
        f"# GPU check{' (tiny CPU run: code paths only, the figures mean nothing)' if args.tiny else ''}",
        "",
        f"`{command.strip()}`, {time.strftime('%Y-%m-%d %H:%M')}, {total:.0f} s in all "
        f"(budget {args.budget:.0f} s). {where}.",
        "",
        "| part | status | s | result |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        summary = o.found["summary"] if o.found else o.log_tail.strip().splitlines()[-1:] or [""]
        summary = summary if isinstance(summary, str) else summary[0]
        lines.append(f"| {o.part.name} | {o.status} | {o.seconds:.0f} | {summary} |")
    goals = [g for o in outcomes if o.found for g in o.found["goals"]]
    if goals:
        lines += ["", "| goal | measured | met |", "|---|---|---|"]
        lines += [f"| {g} | {value} | {'yes' if met else '**no**'} |" for g, value, met in goals]
    for o in outcomes:
        lines += ["", f"## {o.part.title}", ""]
        if o.found:
            lines.append(o.found["markdown"].rstrip())
        elif o.status == "not run":
            lines.append(o.log_tail)
        else:
            lines += [f"**{o.status}** after {o.seconds:.0f} s. Last lines of its log:", ""]
            lines += ["```", o.log_tail.rstrip()[-3000:], "```"]
    return "\n".join(lines) + "\n"


def default_out(tiny: bool) -> Path:
    import torch  # here only: the orchestrator itself needs no torch until the report

    name = "tiny-cpu" if tiny or not torch.cuda.is_available() else torch.cuda.get_device_name()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return HERE / "results" / f"gpu_check_{slug}.md"


def write_report(
    outcomes: list[Outcome], args: argparse.Namespace, total: float, log: Path
) -> Path:
    """The report (--out, or bench/results/gpu_check_<gpu>.md) and the numbers as JSON beside it;
    copies of both and of the log in $OUT when that is a folder (the device tool brings it back)."""
    out = args.out or default_out(args.tiny)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(outcomes, args, total), encoding="utf-8")
    numbers = {o.part.name: {"status": o.status, "seconds": o.seconds, **(o.found or {})}
               for o in outcomes}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(numbers, indent=1, default=str), "utf-8")
    device_out = os.environ.get("OUT")
    if device_out and Path(device_out).is_dir():
        for path in (out, out.with_suffix(".json"), log):
            if path.is_file():
                shutil.copyfile(path, Path(device_out) / path.name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (CI)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all parts")
    parser.add_argument("--only", default=None, help="comma-separated parts, in this order")
    parser.add_argument("--nanogpt", type=Path, default=None, help="a nanoGPT checkout")
    parser.add_argument("--out", type=Path, default=None, help="the report's path")
    parser.add_argument("--keep-work", type=Path, default=None, help="keep scratch files here")
    args = parser.parse_args()
    names = [p.name for p in PARTS]
    chosen = PARTS
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(names)}")
        chosen = [p for p in PARTS if p.name in wanted]
    if args.nanogpt and not (args.nanogpt / "train.py").is_file():
        parser.error(f"--nanogpt {args.nanogpt}: no train.py there (a nanoGPT checkout)")

    started = time.perf_counter()
    deadline = started + args.budget
    work = args.keep_work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "gpu_check.log"
    outcomes = []
    for part in chosen:
        left = deadline - time.perf_counter()
        if left < part.seconds and not args.tiny:
            note = (
                f"Not run: {left:.0f} s of the {args.budget:.0f} s budget left, the part needs "
                f"~{part.seconds} s. Run it with `--only {part.name}`."
            )
            print(f"=== {part.name}: not run ({left:.0f} s left)", flush=True)
            outcomes.append(Outcome(part, "not run", log_tail=note))
        else:
            limit = part.limit if args.tiny else min(part.limit, left)
            print(f"=== {part.name} (limit {limit:.0f} s)", flush=True)
            outcome = run_part(part, args, limit, work, log)
            outcomes.append(outcome)
            if outcome.status == "ok":
                print(f"=== {part.name}: ok in {outcome.seconds:.0f} s: {outcome.found['summary']}")
            else:
                print(f"!!! {part.name}: {outcome.status} after {outcome.seconds:.0f} s")
        # after every part, so that a run stopped from outside still leaves its results
        out = write_report(outcomes, args, time.perf_counter() - started, log)
    print("\n" + out.read_text(encoding="utf-8"))
    print(f"written: {out}")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
