"""Sampling for the server: one prompt, n choices, stop strings, text deltas as they come.

In: a `LoadedModel`, the prompt's token ids and `Sampling` settings (max tokens, temperature,
top-p, n, stop strings, seed). Out: one `Choice` per row (text, finish reason "stop" or
"length", tokens generated), and, while sampling runs, `on_delta(index, text)` calls with each
choice's new text: what a streaming response sends.

The n choices are one batch through `GPT.generate`, which calls back with each step's tokens.
A choice ends at end-of-text, at an extra stop token (the chat template's `<|user|>`), or where
its text reaches a stop string (cut before it). Streamed text holds back what could still turn
out to be the start of a stop string, and an incomplete UTF-8 character, so the deltas always
add up to the final text.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pipeline.serve.models import LoadedModel
from pipeline.serve.protocol import EOT

Delta = Callable[[int, str], None]


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stop_tokens: tuple[str, ...] = ()  # special tokens that end a choice besides end-of-text


@dataclass
class Choice:
    index: int
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0


@dataclass
class _Row:
    """One choice while it is sampled."""

    choice: Choice
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already given to on_delta

    def held_back(self, text: str, stops: tuple[str, ...]) -> int:
        """Characters at the end of `text` that must wait: a partial stop string or character."""
        hold = len(text) - len(text.rstrip("\ufffd"))
        for stop in stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return hold


def generate(
    model: LoadedModel,
    prompt_ids: list[int],
    sampling: Sampling,
    on_delta: Delta | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> list[Choice]:
    """Sample `sampling.n` continuations of `prompt_ids` (see the module docstring)."""
    tokenizer, net = model.tokenizer, model.net
    eot = tokenizer.token_to_id(EOT)
    stop_ids = {
        i for i in (tokenizer.token_to_id(t) for t in sampling.stop_tokens) if i is not None
    }
    enders = stop_ids | ({eot} if eot is not None else set())
    rows = [_Row(Choice(i)) for i in range(sampling.n)]
    stops = sampling.stop

    def send(row: _Row, text: str, final: bool) -> None:
        upto = len(text) if final else len(text) - row.held_back(text, stops)
        if on_delta is not None and upto > row.sent:
            on_delta(row.choice.index, text[row.sent : upto])
        row.sent = max(row.sent, upto)

    def on_token(next_ids: torch.Tensor) -> bool:
        for row, token in zip(rows, next_ids.tolist(), strict=True):
            choice = row.choice
            if choice.finish_reason is not None:
                continue
            if token in enders:
                choice.finish_reason = "stop"
                send(row, choice.text, final=True)
                continue
            row.ids.append(token)
            choice.tokens += 1
            text = tokenizer.decode(row.ids, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, choice.finish_reason = text[:cut], "stop"
            choice.text = text
            send(row, text, final=choice.finish_reason is not None)
        return cancelled() or all(r.choice.finish_reason is not None for r in rows)

    device = next(net.parameters()).device
    seed = sampling.seed if sampling.seed is not None else random.getrandbits(63)
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([prompt_ids] * sampling.n, dtype=torch.long, device=device)
    with torch.inference_mode():
        net.generate(
            idx,
            sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.top_p < 1 else None,
            eos_id=eot,
            stop_ids=stop_ids,
            generator=generator,
            on_token=on_token,
        )
    for row in rows:
        if row.choice.finish_reason is None:
            row.choice.finish_reason = "length"
            send(row, row.choice.text, final=True)
    return [row.choice for row in rows]
