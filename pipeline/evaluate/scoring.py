"""Log-likelihoods from a causal language model, computed the way lm-evaluation-harness does.

In: a model (any `nn.Module` mapping token ids (B, T) to logits (B, T, V), or to a tuple whose
first item is the logits, as our GPT does), its tokenizer and its context length. Out:

- `continuation_scores(pairs)`: for each (context, continuation), the summed log-probability of
  the continuation's tokens given the context, whether greedy decoding would have produced
  exactly those tokens, and how many tokens there were. The pair is encoded as the harness's
  `_encode_pair`: trailing spaces of the context move to the continuation, the whole string is
  encoded once and the continuation is what follows the context's tokens; an empty context is
  replaced by the end-of-text token; a too-long input keeps its last `block_size` tokens.
- `document_nll(texts)`: the total negative log-likelihood (nats) and token count of each text,
  scored as the harness's `loglikelihood_rolling`: the text follows an end-of-text token and is
  cut into disjoint windows of `block_size` predicted tokens, each window conditioned only on
  the tokens inside it (plus the one token before it).

Batches are padded on the right; a causal model's logits at a position never see what comes
after it, so padding changes nothing that is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float  # sum over the continuation's tokens, in nats
    greedy: bool  # every continuation token was the model's argmax
    tokens: int


def windows(length: int, block_size: int) -> list[tuple[int, int]]:
    """Disjoint (start, end) spans over a sequence of `length` tokens, each of up to
    block_size + 1 tokens (block_size inputs, block_size targets): every token but the first is
    predicted exactly once."""
    spans = []
    for start in range(0, length - 1, block_size):
        end = min(start + block_size + 1, length)
        if end - start >= 2:
            spans.append((start, end))
    return spans


class LogLikelihoodScorer:
    def __init__(
        self,
        model: torch.nn.Module,
        encode: Callable[[str], list[int]],
        eot_id: int,
        block_size: int,
        batch_size: int = 16,
    ):
        self.model = model
        self.encode = encode
        self.eot_id = eot_id
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------------ the forward pass

    @torch.no_grad()
    def _logits(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Per row, the logits at each of its positions (T_i, V)."""
        width = max(len(r) for r in rows)
        batch = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            batch[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        out = self.model(batch.to(self.device))
        logits = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
        return [logits[i, : len(row)] for i, row in enumerate(rows)]

    def _batches(self, order: list[int]) -> list[list[int]]:
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    # ---------------------------------------------------------------------- continuation scores

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        if not context:
            return [self.eot_id], self.encode(continuation)
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids) :]

    def continuation_scores(self, pairs: Sequence[tuple[str, str]]) -> list[ContinuationScore]:
        """Scores in the order of `pairs`. A continuation longer than block_size raises."""
        encoded = []
        for context, continuation in pairs:
            context_ids, continuation_ids = self.encode_pair(context, continuation)
            if not continuation_ids:
                raise ValueError(f"continuation {continuation!r} encodes to no tokens")
            if len(continuation_ids) > self.block_size:
                raise ValueError(
                    f"continuation of {len(continuation_ids)} tokens exceeds the context "
                    f"length {self.block_size}"
                )
            # The last block_size + 1 tokens; the final one is only a target.
            whole = (context_ids + continuation_ids)[-(self.block_size + 1) :]
            encoded.append((whole[:-1], whole[1:], len(continuation_ids)))
        # Longest first, as the harness does: similar lengths share a batch, less padding.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
        scores: list[ContinuationScore | None] = [None] * len(encoded)
        for batch in self._batches(order):
            logits = self._logits([encoded[i][0] for i in batch])
            for i, row_logits in zip(batch, logits, strict=True):
                _, targets, n = encoded[i]
                target = torch.tensor(targets[-n:], device=row_logits.device)
                tail = F.log_softmax(row_logits[-n:].float(), dim=-1)
                scores[i] = ContinuationScore(
                    logprob=float(tail.gather(1, target[:, None]).sum()),
                    greedy=bool((tail.argmax(dim=-1) == target).all()),
                    tokens=n,
                )
        return [s for s in scores if s is not None]

    # ------------------------------------------------------------------------- document scores

    def document_nll(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """(total nats, tokens scored) per text."""
        spans = []  # (text index, input ids, target ids)
        for index, text in enumerate(texts):
            ids = [self.eot_id, *self.encode(text)]
            for start, end in windows(len(ids), self.block_size):
                spans.append((index, ids[start : end - 1], ids[start + 1 : end]))
        totals = [[0.0, 0] for _ in texts]
        order = sorted(range(len(spans)), key=lambda i: -len(spans[i][1]))
        for batch in self._batches(order):
            logits = self._logits([spans[i][1] for i in batch])
            for i, row_logits in zip(batch, logits, strict=True):
                index, _, targets = spans[i]
                target = torch.tensor(targets, device=row_logits.device)
                nll = F.cross_entropy(row_logits.float(), target, reduction="sum")
                totals[index][0] += float(nll)
                totals[index][1] += len(targets)
        return [(float(nats), int(count)) for nats, count in totals]
