"""Training and validation batches read from token shards.

In: a folder of `train-*.bin` / `val-*.bin` token shards (pipeline/tokenizer/token_shards.py).
Out: `TokenShardDataModule`, a LightningDataModule whose batches are (x, y) pairs of int64
tensors of shape (batch_size, block_size), y being x shifted by one token.

Training draws windows of block_size + 1 tokens at random positions. Micro-batch number k is a
pure function of (seed, k, rank, world size), and the loader starts at k = global_step *
grad_accum_steps, so a run resumed from a checkpoint sees exactly the batches it would have seen
without the stop, and N processes see together what one process with an N times larger batch
sees. Validation reads a fixed set of val_batches global batches of windows spread evenly over
the val split, in order, so every evaluation (and every run with the same shards and global
batch) scores the same tokens. Each rank reads its own part: Lightning's distributed sampler
is not used (the Trainer gets use_distributed_sampler=False).
Shards are memory-mapped, never loaded whole.

`DATA_MODULES` maps a request's data kind (`request.data.kind`: "shards" for `PretrainData`,
"finetune" for `SFTData`) to the function that builds its data module from (TrainRequest,
TrainConfig, block_size). This module registers "shards"; `pipeline.finetune.data` registers
"finetune" when it is imported, so that this package imports nothing from pipeline.finetune.
`data_module_for` imports the module a request's data names (`SFTData.data_module`) when its
kind is not registered yet, as in the `python -m pipeline.train` process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from pipeline.tokenizer.token_shards import load_tokens, read_header, split_paths


class TokenWindows:
    """All windows of `window` consecutive tokens in a list of shards, addressed by one index.

    A window never crosses a shard boundary; shards shorter than one window contribute none.
    """

    def __init__(self, paths: list[Path], window: int, split: str):
        if not paths:
            raise FileNotFoundError(f"no {split}-*.bin token shards")
        self.paths = list(paths)
        self.window = window
        lengths = [read_header(p)[1] for p in self.paths]
        self.total_tokens = sum(lengths)
        starts_per_shard = [max(0, n - window + 1) for n in lengths]
        self.num_windows = sum(starts_per_shard)
        if self.num_windows == 0:
            raise ValueError(
                f"the {split} split has {self.total_tokens} tokens in {len(paths)} shard(s), "
                f"the longest {max(lengths)}: fewer than one window of block_size + 1 = {window} "
                f"tokens. Use a smaller model.block_size, or more data "
                f"(or a larger shards.val_fraction for the val split)."
            )
        # first global window index of each shard
        self._offsets = np.cumsum([0, *starts_per_shard])
        self._arrays: list[np.ndarray] | None = None  # opened lazily (after a fork, per process)

    def _open(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [load_tokens(p) for p in self.paths]
        return self._arrays

    def windows(self, indices: np.ndarray) -> torch.Tensor:
        """The windows with these global indices, as an int64 tensor (len(indices), window)."""
        arrays = self._open()
        shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
        rows = [
            arrays[s][i - self._offsets[s] : i - self._offsets[s] + self.window]
            for s, i in zip(shard_of, indices, strict=True)
        ]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


class RandomTrainBatches(IterableDataset):
    """An endless stream of (x, y) batches for one rank; batch k depends only on (seed, k).

    Step k's global batch is `batch_size * world_size` windows drawn with a generator seeded by
    (seed, k); rank r takes rows r * batch_size .. (r + 1) * batch_size. So 2 processes with
    batch 4 see exactly the windows 1 process with batch 8 sees, and a resumed run sees the same
    batches as an uninterrupted one.
    """

    def __init__(
        self,
        windows: TokenWindows,
        batch_size: int,
        seed: int,
        rank: int = 0,
        start_batch: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.windows = windows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, k])
        starts = rng.integers(0, self.windows.num_windows, self.batch_size * self.world_size)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        tokens = self.windows.windows(mine)
        return tokens[:, :-1], tokens[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        k = self.start_batch
        while True:
            yield self.batch(k)
            k += 1


class FixedValWindows(Dataset):
    """Windows spread evenly over the val split, the same ones on every evaluation.

    `count` windows in all (fewer if the split is smaller), rounded down to whole global
    batches of `batch_size * world_size` so that every batch has one shape (a short last batch
    would make torch.compile recompile); rank r takes every world_size-th window from r on.
    """

    def __init__(
        self,
        windows: TokenWindows,
        count: int,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.windows = windows
        count = min(count, windows.num_windows)
        whole = count // (batch_size * world_size) * batch_size * world_size
        count = whole or count  # a split smaller than one global batch: keep what there is
        spread = np.linspace(0, windows.num_windows - 1, count).round().astype(np.int64)
        self.total = count  # windows over all ranks
        self.indices = spread[rank::world_size]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.windows.windows(self.indices[i : i + 1])[0]
        return tokens[:-1], tokens[1:]


class StepDataModule(pl.LightningDataModule):
    """What the pretraining and fine-tuning data modules share: the rank and world size they
    read for, where the batch sequence starts (resume), and the generator of their loaders."""

    seed: int
    grad_accum_steps: int

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _start_batch(self) -> int:
        """Resume: continue the batch sequence where the restored optimizer step left it."""
        step = self.trainer.global_step if self.trainer is not None else 0
        return step * self.grad_accum_steps

    def _loader_generator(self) -> torch.Generator:
        # Each DataLoader iterator draws a base seed from its generator, by default the global
        # torch RNG, which dropout also draws from. A resumed run creates its iterators at other
        # moments than the original, so with the global RNG dropout masks would differ after a
        # resume; a private generator keeps the global stream for the model alone.
        return torch.Generator().manual_seed(self.seed)


class TokenShardDataModule(StepDataModule):
    def __init__(
        self,
        shards_dir: str | Path,
        block_size: int,
        batch_size: int,
        val_batches: int,
        seed: int,
        grad_accum_steps: int = 1,
    ):
        super().__init__()
        self.shards_dir = Path(shards_dir)
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_batches = val_batches
        self.seed = seed
        self.grad_accum_steps = grad_accum_steps
        self.train_windows: TokenWindows | None = None
        self.val_windows: TokenWindows | None = None

    def check(self) -> None:
        """Find the shards and make sure each split holds at least one window (clear errors)."""
        if not self.shards_dir.is_dir():
            raise FileNotFoundError(f"token shards folder not found: {self.shards_dir}")
        window = self.block_size + 1
        self.train_windows = TokenWindows(split_paths(self.shards_dir, "train"), window, "train")
        self.val_windows = TokenWindows(split_paths(self.shards_dir, "val"), window, "val")

    def setup(self, stage: str) -> None:
        if self.train_windows is None:
            self.check()

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        stream = RandomTrainBatches(
            self.train_windows,
            self.batch_size,
            self.seed,
            rank=rank,
            start_batch=self._start_batch(),
            world_size=world,
        )
        # the stream yields whole batches; own generator: see _loader_generator
        return DataLoader(stream, batch_size=None, generator=self._loader_generator())

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        # val_batches global batches: the same windows whatever the number of processes
        count = self.val_batches * self.batch_size * world
        dataset = FixedValWindows(self.val_windows, count, self.batch_size, rank, world)
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, generator=self._loader_generator()
        )

    def val_tokens(self, world_size: int = 1) -> int:
        """Target tokens one validation scores, over all ranks."""
        count = self.val_batches * self.batch_size * world_size
        windows = FixedValWindows(self.val_windows, count, self.batch_size, 0, world_size)
        return windows.total * self.block_size


# data kind -> builder(request, train config, block size) -> LightningDataModule
DataModuleBuilder = Callable[[Any, Any, int], pl.LightningDataModule]
DATA_MODULES: dict[str, DataModuleBuilder] = {}


def register_data_module(kind: str, builder: DataModuleBuilder) -> None:
    DATA_MODULES[kind] = builder


def data_module_for(request: Any, train: Any, block_size: int) -> pl.LightningDataModule:
    """The data module of a TrainRequest's data kind; the module its data names (if any) is
    imported first when the kind is unregistered."""
    kind = request.data.kind
    module = getattr(request.data, "data_module", None)
    if kind not in DATA_MODULES and module:
        importlib.import_module(module)
    if kind not in DATA_MODULES:
        raise ValueError(f"no data module registered for {kind!r} training requests")
    return DATA_MODULES[kind](request, train, block_size)


def _token_shards(request: Any, train: Any, block_size: int) -> TokenShardDataModule:
    return TokenShardDataModule(
        request.data.shards_dir,
        block_size=block_size,
        batch_size=train.batch_size,
        val_batches=train.val_batches,
        seed=train.seed,
        grad_accum_steps=train.grad_accum_steps,
    )


register_data_module("shards", _token_shards)
