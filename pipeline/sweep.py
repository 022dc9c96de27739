"""A sweep's variants: which configs to compare, checked before anything runs.

In: a config file, the base `--set` overrides, `--grid KEY=V1,V2` axes (every combination is a
variant), named `--variant NAME KEY=V ...` variants, and `--seeds 0,1` (each variant trained once
per seed); or the same from the config's `sweep:` section (`from_section`). Out: a list of
`Variant`s, each with the overrides that make it (the base ones first, then its own, then
`train.seed=S`), every one of them validated as a full config, and the
comparison metric: bits per byte on a fixed reference text (an evaluate task of type
`perplexity` or `wikitext2`), which does not depend on the tokenizer, nor on the variant's own
held-out split as `val_bpb` does.

Overrides use `--set`'s parser (`pipeline.config.apply_overrides`): values are YAML. A bad key
or value is a `ConfigError` that names the `--grid`/`--variant` item and the key.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field

from pipeline.config import ConfigError, PipelineConfig, SweepConfig, load_config, task_name

REFERENCE_TASK_TYPES = ("perplexity", "wikitext2")
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}$")


@dataclass(frozen=True)
class Variant:
    """One config of the sweep, trained with one seed."""

    name: str  # the recipe's name, shared by its seeds
    overrides: tuple[str, ...]  # this variant's own overrides (not the base ones, not the seed)
    seed: int | None = None  # train.seed, or None for the config's
    base: tuple[str, ...] = field(default=(), repr=False)  # the sweep's common --set overrides
    grid: tuple[str, ...] = field(default=(), repr=False)  # those of `overrides` from --grid

    @property
    def run_name(self) -> str:
        return self.name if self.seed is None else f"{self.name} seed={self.seed}"

    @property
    def all_overrides(self) -> list[str]:
        seed = [f"train.seed={self.seed}"] if self.seed is not None else []
        return [*self.base, *self.overrides, *seed]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "overrides": list(self.overrides),
            "seed": self.seed,
            "grid": list(self.grid),
        }


def split_values(text: str) -> list[str]:
    """`20,50` -> ["20", "50"]; commas inside brackets or quotes stay (`[a,b],[c]`)."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`["clean.min_words=20,50", ...]` -> [("clean.min_words", ["20", "50"]), ...]."""
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split(".") or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected section.key=value1,value2,...")
        parsed = split_values(values)
        if "" in parsed:
            raise ConfigError(f"--grid {item!r}: an empty value in the list")
        if any(k == key for k, _ in axes):
            raise ConfigError(f"--grid {key}: given twice")
        axes.append((key, parsed))
    return axes


def parse_seeds(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    try:
        seeds = [int(s) for s in split_values(text)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers such as 0,1") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is given twice")
    return list(seeds)


def _variant_name(overrides: tuple[str, ...]) -> str:
    """`clean.min_words=20` -> `min_words=20`: the key's last part is enough in a table."""
    if not overrides:
        return "base"
    return " ".join(
        f"{k.rpartition('.')[2]}={v}" for k, _, v in (o.partition("=") for o in overrides)
    )


def expand(
    grid: list[str] | None = None,
    variants: list[list[str]] | None = None,
    seeds: str | None = None,
    base: list[str] | None = None,
) -> list[Variant]:
    """The variants of a sweep: every combination of the grid's values, then each named variant
    (`[NAME, KEY=V, ...]`; a grid, if any, applies to each of them too), each once per seed."""
    axes = parse_grid(grid or [])
    combos = [tuple(f"{k}={v}" for k, v in zip([k for k, _ in axes], values, strict=True))
              for values in itertools.product(*[vs for _, vs in axes])]  # fmt: skip
    named: list[tuple[str | None, tuple[str, ...]]] = []
    for entry in variants or []:
        if not entry:
            raise ConfigError("--variant: expected NAME [section.key=value ...]")
        name, overrides = entry[0], tuple(entry[1:])
        if not _VARIANT_NAME.match(name) or "=" in name:
            raise ConfigError(
                f"--variant {name!r}: the first word is the variant's name (letters, digits, "
                "'.', '_', '-'), then section.key=value overrides"
            )
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--variant {name} {item!r}: expected section.key=value")
        named.append((name, overrides))
    if not named:
        named = [(None, ())]
    out: list[Variant] = []
    for (name, own), combo in itertools.product(named, combos):
        overrides = own + combo
        label = name if not combo else (f"{name} {_variant_name(combo)}" if name else None)
        label = label or _variant_name(combo)
        for seed in parse_seeds(seeds):
            out.append(Variant(label, overrides, seed, tuple(base or ()), combo))
    names = [v.run_name for v in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--variant: two variants are named {', '.join(twice)}")
    if len({v.name for v in out}) < 2:
        raise ConfigError(
            "a sweep compares at least two variants: give --grid KEY=V1,V2 or two --variant"
        )
    return out


def from_section(section: SweepConfig) -> tuple[list[str], list[list[str]], str | None]:
    """A config's `sweep:` section as the command line's words: (--grid items, --variant
    entries, --seeds). Values become YAML text (JSON is YAML), as `--set` reads them."""
    grid = [
        f"{key}=" + ",".join(json.dumps(value) for value in values)
        for key, values in section.grid.items()
    ]
    variants = [[name, *overrides] for name, overrides in section.variants.items()]
    seeds = ",".join(str(seed) for seed in section.seeds) or None
    return grid, variants, seeds


def _where(variant: Variant, item: str) -> str:
    """The command-line words that gave an override: `--grid clean.min_words=...`."""
    if variant.seed is not None and item == f"train.seed={variant.seed}":
        return "--seeds"
    if item in variant.grid:
        return "--grid"
    if item in variant.overrides:
        return "--variant"
    return "--set"


def check_variants(config_path: str, variants: list[Variant]) -> list[PipelineConfig]:
    """Every variant's full config, validated; a ConfigError names the variant and the key."""
    configs = []
    for variant in variants:
        try:
            configs.append(load_config(config_path, variant.all_overrides))
        except ConfigError as exc:
            given = " ".join(f"{_where(variant, o)} {o}" for o in variant.all_overrides)
            raise ConfigError(f"sweep variant {variant.run_name!r} ({given}): {exc}") from None
    return configs


def reference_metric(config: PipelineConfig, metric: str | None = None) -> str:
    """The metric variants are ranked by: `metric` if given, else `<task>_bpb` of the first
    evaluate task on a fixed text (perplexity or wikitext2)."""
    if metric:
        return metric
    for task in config.evaluate.tasks:
        if task.type in REFERENCE_TASK_TYPES:
            return f"{task_name(task)}_bpb"
    raise ConfigError(
        "evaluate.tasks: a sweep compares variants by bits per byte on one fixed reference text "
        "(val_bpb is measured on each variant's own held-out split); add a task such as "
        "{type: perplexity, name: reference, path: FILE}, or give --metric"
    )


def token_budget(config: PipelineConfig) -> int:
    """Tokens one training run sees per device: steps x batch x accumulation x block size."""
    train = config.train
    return train.max_steps * train.batch_size * train.grad_accum_steps * config.model.block_size


def check_same_budget(variants: list[Variant], configs: list[PipelineConfig]) -> int:
    """Proxy models are comparable on the same token budget: a variant that changes it (max
    steps, batch, block size) is a config error."""
    budgets = {v.run_name: token_budget(c) for v, c in zip(variants, configs, strict=True)}
    if len(set(budgets.values())) > 1:
        shown = ", ".join(f"{name}: {tokens:,}" for name, tokens in budgets.items())
        raise ConfigError(
            "sweep: every variant trains on the same token budget (train.max_steps x "
            f"train.batch_size x train.grad_accum_steps x model.block_size); these differ: {shown}"
        )
    return next(iter(budgets.values()))
