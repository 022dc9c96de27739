"""Batches for supervised fine-tuning: (prompt, response) pairs in, masked token rows out.

In: the examples the finetune stage wrote (`examples/train.jsonl`, `examples/eval.jsonl`: one
JSON object per line with at least task, prompt and response), the model's tokenizer, its
context length, and the task sampling weights.
Out: `SFTDataModule`, a LightningDataModule whose batches are (x, y, segments): int64 tensors
of shape (batch_size, block_size). y is x shifted by one with IGNORE_INDEX on every target that
is not a response token (prompt masking, padding), and `segments` numbers the examples packed
into a row (-1 on padding), so that attention stays within each example (see
`GPT.forward(segment_ids=...)`).

An example is `prompt ids + response ids + <|endoftext|>`. One that does not fit the context
keeps its end: the response is cut to at most 3/4 of the context, then the prompt loses its
first tokens (the question of a QA prompt comes last and survives). With packing, a row holds
as many whole examples as fit; without, one example per row, padded.

Training rows are drawn with a generator seeded by (seed, batch number): a task by its weight,
then one of its examples at random. Batch k is therefore a pure function of (seed, k), and a
resumed run sees the batches the uninterrupted run would have seen. Validation packs the
held-out examples in order: the same rows at every validation.

Importing this module registers `SFTDataModule` as the "finetune" data module of
`pipeline.train.data.DATA_MODULES` (a fine-tuning TrainRequest names this module, so the
training process imports it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, IterableDataset

from pipeline.model.gpt import IGNORE_INDEX
from pipeline.special_tokens import EOT_TOKEN as EOT
from pipeline.special_tokens import PAD_TOKEN as PAD
from pipeline.train.data import StepDataModule, register_data_module


@dataclass(frozen=True)
class EncodedExample:
    inputs: np.ndarray  # ids[:-1]
    targets: np.ndarray  # ids[1:], IGNORE_INDEX where the target is a prompt token
    truncated: bool

    def __len__(self) -> int:
        return len(self.inputs)


def read_example_rows(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def encode_example(
    prompt_ids: Sequence[int], response_ids: Sequence[int], eot_id: int, block_size: int
) -> EncodedExample:
    """One example as (inputs, targets) of at most block_size tokens, loss on the response."""
    window = block_size + 1  # inputs and targets are one token apart
    response = list(response_ids) + [eot_id]
    prompt = list(prompt_ids)
    truncated = False
    if len(prompt) + len(response) > window:
        truncated = True
        response = response[: max(1, window * 3 // 4)]
        room = window - len(response)  # a prompt shorter than the room is kept whole
        prompt = prompt[max(0, len(prompt) - room) :] if room > 0 else []
    ids = np.asarray(prompt + response, dtype=np.int64)
    targets = ids[1:].copy()
    targets[: max(0, len(prompt) - 1)] = IGNORE_INDEX  # targets that are prompt tokens
    return EncodedExample(ids[:-1], targets, truncated)


class ExampleSet:
    """Encoded examples grouped by task."""

    def __init__(self, rows: list[dict], tokenizer: Tokenizer, block_size: int):
        eot = tokenizer.token_to_id(EOT)
        if eot is None:
            raise ValueError(f"the tokenizer has no {EOT} token, which ends every response")
        self.pad_id = tokenizer.token_to_id(PAD)
        if self.pad_id is None:
            self.pad_id = eot  # GPT-2's tokenizer has no pad token: padding is masked anyway
        prompts = tokenizer.encode_batch([r["prompt"] for r in rows], add_special_tokens=False)
        responses = tokenizer.encode_batch([r["response"] for r in rows], add_special_tokens=False)
        self.by_task: dict[str, list[EncodedExample]] = {}
        for row, p, r in zip(rows, prompts, responses, strict=True):
            example = encode_example(p.ids, r.ids, eot, block_size)
            self.by_task.setdefault(row["task"], []).append(example)
        self.block_size = block_size

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_task.values())

    def truncated(self) -> int:
        return sum(e.truncated for v in self.by_task.values() for e in v)

    def response_tokens(self) -> int:
        return int(sum((e.targets != IGNORE_INDEX).sum() for v in self.by_task.values() for e in v))

    def in_order(self) -> list[EncodedExample]:
        return [e for task in sorted(self.by_task) for e in self.by_task[task]]


def pack_rows(
    examples: Sequence[EncodedExample], block_size: int, pad_id: int, packing: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows of (inputs, targets, segments), whole examples in order, padded to block_size."""
    rows: list[list[EncodedExample]] = []
    used = block_size  # forces a new row for the first example
    for example in examples:
        if not packing or used + len(example) > block_size:
            rows.append([])
            used = 0
        rows[-1].append(example)
        used += len(example)
    return [_row(row, block_size, pad_id) for row in rows]


def _row(
    examples: Sequence[EncodedExample], block_size: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.full(block_size, pad_id, dtype=np.int64)
    y = np.full(block_size, IGNORE_INDEX, dtype=np.int64)
    seg = np.full(block_size, -1, dtype=np.int64)
    at = 0
    for number, example in enumerate(examples):
        n = len(example)
        x[at : at + n], y[at : at + n], seg[at : at + n] = example.inputs, example.targets, number
        at += n
    return x, y, seg


def _stack(rows: list[tuple[np.ndarray, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.stack(column)) for column in zip(*rows, strict=True))


class MixedTrainBatches(IterableDataset):
    """Endless training batches for one rank; global batch k depends only on (seed, k)."""

    def __init__(
        self,
        examples: ExampleSet,
        weights: dict[str, float],
        batch_size: int,
        seed: int,
        packing: bool,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ):
        self.tasks = [t for t in sorted(examples.by_task) if examples.by_task[t]]
        if not self.tasks:
            raise ValueError("no training examples")
        w = np.asarray([weights.get(t, 1.0) for t in self.tasks], dtype=np.float64)
        self.probabilities = w / w.sum()
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.packing = packing
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch

    def _draw(self, rng: np.random.Generator) -> EncodedExample:
        task = self.tasks[rng.choice(len(self.tasks), p=self.probabilities)]
        pool = self.examples.by_task[task]
        return pool[int(rng.integers(len(pool)))]

    def batch(self, k: int) -> tuple[torch.Tensor, ...]:
        """Rows filled with drawn examples in order; an example that does not fit the current
        row starts the next one (dropping it would under-sample the tasks with long examples)."""
        rng = np.random.default_rng([self.seed, k])
        block, rows, row, used = self.examples.block_size, [], [], 0
        while len(rows) < self.batch_size * self.world_size:
            example = self._draw(rng)
            if row and (not self.packing or used + len(example) > block):
                rows.append(_row(row, block, self.examples.pad_id))
                row, used = [], 0
            row.append(example)
            used += len(example)
        return _stack(rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        k = self.start_batch
        while True:
            yield self.batch(k)
            k += 1


class SFTDataModule(StepDataModule):
    def __init__(
        self,
        examples_dir: str | Path,
        tokenizer_path: str | Path,
        block_size: int,
        batch_size: int,
        val_batches: int,
        seed: int,
        weights: dict[str, float],
        packing: bool = True,
        grad_accum_steps: int = 1,
    ):
        super().__init__()
        self.examples_dir = Path(examples_dir)
        self.tokenizer_path = Path(tokenizer_path)
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_batches = val_batches
        self.seed = seed
        self.weights = weights
        self.packing = packing
        self.grad_accum_steps = grad_accum_steps
        self.train_set: ExampleSet | None = None
        self.val_rows: list[tuple[np.ndarray, ...]] = []

    def check(self) -> None:
        """Read and encode the examples (clear errors when there are none)."""
        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        train = read_example_rows(self.examples_dir / "train.jsonl")
        held_out = read_example_rows(self.examples_dir / "eval.jsonl")
        if not train:
            raise ValueError(f"no training examples in {self.examples_dir / 'train.jsonl'}")
        if not held_out:
            raise ValueError(
                f"no held-out examples in {self.examples_dir / 'eval.jsonl'} for validation: "
                "raise the tasks' eval_fraction or give an eval_path"
            )
        self.train_set = ExampleSet(train, tokenizer, self.block_size)
        val_set = ExampleSet(held_out, tokenizer, self.block_size)
        rows = pack_rows(val_set.in_order(), self.block_size, val_set.pad_id, self.packing)
        self.val_rows = rows[: self.val_batches * self.batch_size]
        self.stats = {
            "train_examples": len(self.train_set),
            "train_truncated": self.train_set.truncated(),
            "val_examples": len(val_set),
            "val_rows": len(self.val_rows),
        }

    def setup(self, stage: str) -> None:
        if self.train_set is None:
            self.check()

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        stream = MixedTrainBatches(
            self.train_set,
            self.weights,
            self.batch_size,
            self.seed,
            self.packing,
            rank=rank,
            world_size=world,
            start_batch=self._start_batch(),
        )
        return DataLoader(stream, batch_size=None, generator=self._loader_generator())

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        mine = self.val_rows[rank::world]
        batches = [
            _stack(mine[i : i + self.batch_size]) for i in range(0, len(mine), self.batch_size)
        ]
        return DataLoader(batches, batch_size=None, generator=self._loader_generator())

    def val_tokens(self, world_size: int = 1) -> int:
        """Response tokens one validation scores."""
        return int(sum((y != IGNORE_INDEX).sum() for _, y, _ in self.val_rows))


def _sft_data(request: Any, train: Any, block_size: int) -> SFTDataModule:
    """The data module of a fine-tuning TrainRequest (registered as kind "finetune")."""
    if not request.tokenizer_path:
        raise ValueError("fine-tuning needs the model's tokenizer (tokenizer_path)")
    return SFTDataModule(
        request.data.examples_dir,
        request.tokenizer_path,
        block_size=block_size,
        batch_size=train.batch_size,
        val_batches=train.val_batches,
        seed=train.seed,
        weights=request.data.weights,
        packing=request.data.packing,
        grad_accum_steps=train.grad_accum_steps,
    )


register_data_module("finetune", _sft_data)
