"""Supervised fine-tuning batches and training, with real components: encode_example's prompt
masking and truncation, packing into rows (whole examples, segment ids, masked padding), the
seeded task mixture (pure in (seed, batch), split across ranks, weighted), the packed loss of a
tiny GPT equal to its examples' losses one by one (gpt2 and llama), and real `run_training`
fine-tunes of a tiny model folder: full, LoRA (only the adapters move, merged final/), and a run
killed mid-way that resumes to the very weights of an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import safetensors.torch
import torch
import torch.nn as nn
from tiny_models import save_tiny_model, train_tokenizer

from pipeline.finetune.data import (
    ExampleSet,
    MixedTrainBatches,
    SFTDataModule,
    encode_example,
    pack_rows,
    read_example_rows,
)
from pipeline.model import GPT, IGNORE_INDEX, GPTConfig, load_model, save_model
from pipeline.model.checkpoint import load_config
from pipeline.special_tokens import EOT_TOKEN as EOT
from pipeline.train.checkpoints import complete_checkpoints

BLOCK = 64
POSITIVE = "good great lovely superb fine nice happy brilliant wonderful excellent charming".split()
NEGATIVE = "bad awful poor terrible dull boring sad horrid dreadful weak ugly nasty".split()
LORA_TARGETS = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "mlp.c_gate"]


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest, and on a busy machine a second one costs
    ~100x (OpenMP threads spinning for a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer(vocab_size=300)  # byte-level BPE with <|endoftext|> and <|pad|>
    assert tok.token_to_id(EOT) is not None
    return tok


def sentiment_rows() -> list[dict]:
    rows = [
        {"task": "sentiment", "prompt": f"Review: {w}\nSentiment:", "response": f" {label}"}
        for words, label in ((POSITIVE, "positive"), (NEGATIVE, "negative"))
        for w in words
    ]
    rows += [
        {"task": "repeat", "prompt": f"Repeat: {w}\n", "response": f" {w}"}
        for w in POSITIVE + NEGATIVE
    ]
    return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer) -> Path:
    """examples/{train,eval}.jsonl and two tiny model folders (gpt2, llama) with the tokenizer."""
    root = tmp_path_factory.mktemp("sft")
    examples = root / "examples"
    examples.mkdir()
    rows = sentiment_rows()
    for split, chosen in (("train", rows), ("eval", rows[::3])):
        with (examples / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in chosen)
    for arch in ("gpt2", "llama"):
        # dropout in the gpt2 model (and LoRA's on llama): a resume must restore the RNG too
        dropout = 0.1 if arch == "gpt2" else 0.0
        folder = save_tiny_model(
            root / arch, tokenizer, seed=0, block_size=BLOCK, arch=arch, dropout=dropout,
            bias=arch == "gpt2",
        )  # fmt: skip
        # The init's tiny embedding caps every logit near 0.6: a frozen (tied) head, as under
        # LoRA, could never fit the responses. Scaled, it has a trained model's range.
        model = load_model(folder)
        with torch.no_grad():
            model.transformer.wte.weight.mul_(10.0)
        save_model(model, folder)
    return root


@pytest.fixture(scope="module")
def example_set(workspace, tokenizer) -> ExampleSet:
    return ExampleSet(read_example_rows(workspace / "examples" / "train.jsonl"), tokenizer, BLOCK)


# ------------------------------------------------------------------------- 1. encode_example


def test_encode_example_puts_the_loss_on_the_response_and_end_of_text_only():
    prompt, response, eot = [5, 6, 7, 8], [20, 21, 22], 0
    example = encode_example(prompt, response, eot, block_size=32)
    assert example.inputs.tolist() == prompt + response  # prompt + response + eot, minus last
    assert example.targets.tolist() == [IGNORE_INDEX] * 3 + response + [eot]
    assert example.inputs.dtype == example.targets.dtype == np.int64
    assert not example.truncated and len(example) == 7
    # an example that exactly fills the context is not cut
    exact = encode_example(list(range(100, 128)), [1, 2, 3, 4], eot, block_size=32)
    assert len(exact) == 32 and not exact.truncated
    assert exact.targets[exact.targets != IGNORE_INDEX].tolist() == [1, 2, 3, 4, eot]


def test_an_over_long_example_keeps_the_end_of_its_prompt_and_the_start_of_its_response():
    eot, block = 0, 32
    prompt = list(range(100, 200))
    # long prompt, short response: the prompt loses its first tokens, the response is whole
    cut = encode_example(prompt, [1, 2, 3], eot, block)
    assert cut.truncated and len(cut) == block
    assert cut.inputs.tolist() == prompt[-29:] + [1, 2, 3]
    assert cut.targets[cut.targets != IGNORE_INDEX].tolist() == [1, 2, 3, eot]
    # long response: at most 3/4 of the context, its start; the prompt's end fills the rest
    response = list(range(300, 400))
    long = encode_example(prompt[:10], response, eot, block)
    assert long.truncated and len(long) == block
    assert long.inputs.tolist() == prompt[1:10] + response[:23]
    assert long.targets[long.targets != IGNORE_INDEX].tolist() == response[:24]
    # a short prompt with a long response is kept whole: only what does not fit is dropped
    short = encode_example(prompt[:5], response, eot, block)
    assert short.truncated
    assert short.inputs.tolist() == prompt[:5] + response[:23]


@pytest.mark.parametrize("block", [8, 16, 33])
def test_encode_example_invariants_over_many_lengths(block):
    eot, window = 0, block + 1
    for p in range(1, 3 * block, 3):  # prompts are never empty (examples.py rejects them)
        for r in range(0, 3 * block, 5):
            prompt, response = list(range(1000, 1000 + p)), list(range(5000, 5000 + r))
            ex = encode_example(prompt, response, eot, block)
            full = prompt + response + [eot]
            assert len(ex) <= block and ex.truncated == (len(full) > window)
            ids = ex.inputs.tolist() + [int(ex.targets[-1])]
            shifted = zip(ex.targets.tolist(), ids[1:], strict=True)
            assert all(t in (IGNORE_INDEX, i) for t, i in shifted)  # the next id, or ignored
            kept_prompt = [i for i in ids if 1000 <= i < 5000]
            kept_response = [i for i in ids if i >= 5000 or i == eot]
            assert ids == kept_prompt + kept_response  # prompt part, then response part
            assert kept_prompt == prompt[p - len(kept_prompt) :]  # the prompt's end
            assert kept_response == (response + [eot])[: len(kept_response)]  # the response's start
            # the loss is on exactly the kept response (all but its first token without a prompt)
            scored = ex.targets[ex.targets != IGNORE_INDEX].tolist()
            assert scored == (kept_response if kept_prompt else kept_response[1:])
            # nothing is dropped that fits: the response up to 3/4 of the context, then the prompt
            room = window * 3 // 4
            assert len(kept_response) == (r + 1 if r + 1 <= room or not ex.truncated else room)
            assert len(kept_prompt) == min(p, window - len(kept_response))


# ---------------------------------------------------------------- 2. packing and the mixture


def _segments(x, y, seg) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (inputs, targets) of each segment of one row, after checking the row's layout."""
    x, y, seg = (np.asarray(t) for t in (x, y, seg))
    filled = int((seg >= 0).sum())
    assert (seg[:filled] >= 0).all() and (seg[filled:] == -1).all()  # padding only at the end
    assert (y[filled:] == IGNORE_INDEX).all()  # padding is never a target
    numbers = seg[:filled]
    assert numbers[0] == 0 and set(np.diff(numbers).tolist()) <= {0, 1}  # 0, 1, 2, ... in runs
    out = []
    for number in range(int(numbers.max()) + 1 if filled else 0):
        where = seg == number
        out.append((tuple(x[where].tolist()), tuple(y[where].tolist())))
    return out


def test_pack_rows_holds_whole_examples_in_order(example_set):
    examples = example_set.in_order()
    pad = example_set.pad_id
    rows = pack_rows(examples, BLOCK, pad, packing=True)
    assert len(rows) < len(examples) / 1.5  # several examples per row
    flat = []
    for i, (x, y, seg) in enumerate(rows):
        assert x.shape == y.shape == seg.shape == (BLOCK,)
        assert (x[seg == -1] == pad).all()
        flat += _segments(x, y, seg)
        if i + 1 < len(rows):  # greedy: the next row's first example did not fit here
            assert (seg >= 0).sum() + len(_segments(*rows[i + 1])[0][0]) > BLOCK
    assert flat == [(tuple(e.inputs.tolist()), tuple(e.targets.tolist())) for e in examples]

    single = pack_rows(examples, BLOCK, pad, packing=False)
    assert len(single) == len(examples)
    for (x, y, seg), example in zip(single, examples, strict=True):
        assert set(seg.tolist()) <= {0, -1} and (seg == 0).sum() == len(example)
        assert _segments(x, y, seg) == [(tuple(example.inputs), tuple(example.targets))]


def _task_of(example_set: ExampleSet) -> dict[tuple[int, ...], tuple[str, tuple[int, ...]]]:
    return {
        tuple(e.inputs.tolist()): (task, tuple(e.targets.tolist()))
        for task, pool in example_set.by_task.items()
        for e in pool
    }


def _row_tasks(batch, lookup) -> list[list[str]]:
    x, y, seg = batch
    assert x.dtype == y.dtype == seg.dtype == torch.int64
    tasks = []
    for row in zip(x, y, seg, strict=True):
        found = []
        for inputs, targets in _segments(*row):
            task, expected_targets = lookup[inputs]  # a whole, known example
            assert targets == expected_targets
            found.append(task)
        tasks.append(found)
    return tasks


@pytest.mark.parametrize("packing", [True, False])
def test_mixed_batches_are_whole_examples_and_a_pure_function_of_seed_and_batch(
    example_set, packing
):
    lookup = _task_of(example_set)
    weights = {"sentiment": 3.0, "repeat": 1.0}
    stream = MixedTrainBatches(example_set, weights, batch_size=4, seed=7, packing=packing)
    batch = stream.batch(5)
    assert all(t.shape == (4, BLOCK) for t in batch)
    per_row = [len(tasks) for tasks in _row_tasks(batch, lookup)]
    assert max(per_row) > 1 if packing else per_row == [1, 1, 1, 1]

    again = MixedTrainBatches(example_set, weights, batch_size=4, seed=7, packing=packing)
    assert all(torch.equal(a, b) for a, b in zip(again.batch(5), batch, strict=True))
    assert not torch.equal(stream.batch(6)[0], batch[0])
    other_seed = MixedTrainBatches(example_set, weights, batch_size=4, seed=8, packing=packing)
    assert not torch.equal(other_seed.batch(5)[0], batch[0])
    # a stream started at batch 5 (a resume) yields batches 5, 6, ...
    resumed = iter(MixedTrainBatches(example_set, weights, 4, 7, packing, start_batch=5))
    assert torch.equal(next(resumed)[0], batch[0])
    assert torch.equal(next(resumed)[0], stream.batch(6)[0])
    # ranks 0 and 1 of two, batch 2 each, see together what one process of batch 4 sees
    halves = [
        MixedTrainBatches(example_set, weights, 2, 7, packing, rank=r, world_size=2) for r in (0, 1)
    ]
    for column in range(3):
        joined = torch.cat([h.batch(5)[column] for h in halves])
        assert torch.equal(joined, batch[column])


@pytest.mark.parametrize("packing", [False, True])
def test_tasks_are_drawn_by_their_weights(example_set, packing):
    lookup = _task_of(example_set)
    for weights, expected in (({"sentiment": 3.0, "repeat": 1.0}, 0.75), ({"repeat": 4.0}, 0.2)):
        stream = MixedTrainBatches(example_set, weights, batch_size=100, seed=0, packing=packing)
        tasks = [t for k in range(40) for row in _row_tasks(stream.batch(k), lookup) for t in row]
        share = tasks.count("sentiment") / len(tasks)  # a missing weight counts 1
        # packed: an example that does not fit starts the next row, so no task is under-drawn
        assert len(tasks) >= 4000 and share == pytest.approx(expected, abs=0.03)


def test_the_data_module_validates_on_the_held_out_response_tokens(workspace, tokenizer):
    tokenizer_path = workspace / "gpt2" / "tokenizer.json"
    data = SFTDataModule(
        workspace / "examples", tokenizer_path, BLOCK, batch_size=4, val_batches=100, seed=1,
        weights={},
    )  # fmt: skip
    data.check()
    held_out = read_example_rows(workspace / "examples" / "eval.jsonl")
    assert data.stats["val_examples"] == len(held_out) and data.stats["train_truncated"] == 0
    expected = sum(len(tokenizer.encode(r["response"]).ids) + 1 for r in held_out)
    assert data.val_tokens() == expected
    batches = list(data.val_dataloader())
    assert sum(b[0].shape[0] for b in batches) == data.stats["val_rows"]
    assert all(len(b) == 3 and b[0].shape[1] == BLOCK for b in batches)
    # the held-out examples in order (by task), each whole, the same at every validation
    in_order = [r for task in ("repeat", "sentiment") for r in held_out if r["task"] == task]
    segments = [s for b in batches for row in zip(*b, strict=True) for s in _segments(*row)]
    assert len(segments) == len(in_order)
    for (inputs, targets), row in zip(segments, in_order, strict=True):
        prompt = tokenizer.encode(row["prompt"]).ids
        assert list(inputs[: len(prompt)]) == prompt
        assert [t for t in targets if t != IGNORE_INDEX] == tokenizer.encode(
            row["response"]
        ).ids + [tokenizer.token_to_id(EOT)]
    again = list(data.val_dataloader())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, batches, strict=True))


# ------------------------------------------------------- 3. the packed loss is the sum of parts


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_loss_equals_the_token_weighted_loss_of_each_example_alone(arch):
    torch.manual_seed(3)
    config = GPTConfig(vocab_size=97, block_size=48, n_layer=2, n_head=2, n_embd=32, arch=arch)
    model = GPT(config).eval()
    with torch.no_grad():  # larger weights than the init: attention that leaks would show
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    rng = np.random.default_rng(0)
    examples = [
        encode_example(
            rng.integers(2, 97, size=int(p)).tolist(), rng.integers(2, 97, size=int(r)).tolist(),
            eot_id=1, block_size=48,
        )
        for p, r in [(7, 4), (3, 9), (12, 2), (5, 5), (20, 6), (2, 3), (9, 8)]
    ]  # fmt: skip
    rows = pack_rows(examples, 48, pad_id=0, packing=True)
    assert len(rows) == 2  # 4 + 3 examples, padding after each
    x, y, seg = (torch.from_numpy(np.stack(c)) for c in zip(*rows, strict=True))
    with torch.no_grad():
        logits, packed = model(x, y, segment_ids=seg)
        nats, tokens, r, at = 0.0, 0, 0, 0
        for example in examples:
            if at + len(example) > 48:
                r, at = r + 1, 0
            alone_logits, alone = model(
                torch.from_numpy(example.inputs)[None], torch.from_numpy(example.targets)[None]
            )
            n = int((example.targets != IGNORE_INDEX).sum())
            nats, tokens = nats + alone.item() * n, tokens + n
            # each position sees exactly what it would see alone
            assert torch.allclose(logits[r, at : at + len(example)], alone_logits[0], atol=1e-5)
            at += len(example)
        assert packed.item() == pytest.approx(nats / tokens, rel=1e-5)
        # the test can fail: without the segments the packed examples see each other
        _, leaky = model(x, y)
        assert abs(leaky.item() - nats / tokens) > 1e-3


# ------------------------------------------------------------- 4. and 5. real fine-tuning runs


def make_request(workspace: Path, out: Path, arch: str, lora: bool, **train):
    from pipeline.config import LoraConfig, TrainConfig
    from pipeline.model.config import GPTConfig
    from pipeline.train import SFTData, TrainRequest

    model_dir = workspace / arch
    gpt_config = json.loads((model_dir / "model_config.json").read_text())
    settings = dict(
        max_steps=20,
        batch_size=8,
        learning_rate=3e-2,
        min_lr=3e-3,
        warmup_steps=3,
        val_every_steps=10,
        val_batches=4,
        checkpoint_every_steps=10,
        keep_last_checkpoints=5,
        log_every_steps=10,
        precision="32-true",
        accelerator="cpu",
        devices=1,
        progress_bar=False,
        sample_tokens=0,
        seed=5,
    )
    settings.update(train)
    return TrainRequest(
        model=GPTConfig(**gpt_config),
        train=TrainConfig(**settings),
        data=SFTData(
            examples_dir=str(workspace / "examples"),
            packing=True,
            weights={"sentiment": 3.0, "repeat": 1.0},
        ),
        out_dir=str(out),
        tokenizer_path=str(model_dir / "tokenizer.json"),
        init_from=str(model_dir),
        lora=LoraConfig(rank=4, alpha=8.0, dropout=0.1, targets=LORA_TARGETS) if lora else None,
    )


# full fine-tune of the gpt2 folder; LoRA (with adapter dropout) on the llama folder
RUNS = {"full": ("gpt2", False), "lora": ("llama", True)}


@pytest.fixture(scope="module")
def straight_runs(workspace) -> dict[str, tuple[Path, dict]]:
    """Each kind of fine-tune, run once uninterrupted (shared by the tests below)."""
    from pipeline.train import run_training

    done = {}
    for kind, (arch, lora) in RUNS.items():
        out = workspace / f"straight-{kind}"
        done[kind] = (out, run_training(make_request(workspace, out, arch, lora)))
    return done


def sft_val_loss(model: GPT, workspace: Path) -> float:
    """Mean loss per response token of the held-out examples, as validation counts it."""
    data = SFTDataModule(
        workspace / "examples", workspace / "gpt2" / "tokenizer.json", BLOCK, batch_size=8,
        val_batches=4, seed=5, weights={},
    )  # fmt: skip
    data.check()
    nats = tokens = 0.0
    with torch.no_grad():
        for x, y, seg in data.val_dataloader():
            _, loss = model.eval()(x, y, segment_ids=seg)
            n = int((y != IGNORE_INDEX).sum())
            nats, tokens = nats + loss.item() * n, tokens + n
    assert tokens == data.val_tokens()
    return nats / tokens


def greedy_answer(model: GPT, tokenizer, prompt: str, tokens: int = 12) -> str:
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    out = model.eval().generate(ids, tokens, temperature=0, eos_id=tokenizer.token_to_id(EOT))
    return tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=False)


def test_a_full_fine_tune_learns_the_responses(workspace, straight_runs, tokenizer):
    out, metrics = straight_runs["full"]
    base, final = load_model(workspace / "gpt2"), load_model(out / "final")
    assert final.config == base.config
    before, after = sft_val_loss(base, workspace), sft_val_loss(final, workspace)
    assert metrics["val_loss"] == pytest.approx(after, rel=1e-5)  # response tokens only
    print(f"full fine-tune: held-out loss {before:.3f} -> {after:.3f}")
    assert after < before - 4.0 and after < 2.5, (before, after)
    assert metrics["steps"] == 20 and metrics["resumed_from_step"] is None
    assert metrics["train_examples"] == len(sentiment_rows()) and metrics["val_rows"] > 0
    assert "trainable_params" not in metrics
    assert (out / "final" / "tokenizer.json").read_text() == (
        workspace / "gpt2" / "tokenizer.json"
    ).read_text()
    best = load_model(out / "checkpoints" / "best").state_dict()
    assert all(torch.equal(best[k], final.state_dict()[k]) for k in best)  # step 20 is best
    # every weight moved from the start (full fine-tune)
    start, end = base.state_dict(), final.state_dict()
    assert all(not torch.equal(start[k], end[k]) for k in start)
    # the model has learned the responses' form: a label, then the end of text
    labels = {" positive<|endoftext|>", " negative<|endoftext|>"}
    assert greedy_answer(final, tokenizer, "Review: awful\nSentiment:") in labels
    assert greedy_answer(base, tokenizer, "Review: awful\nSentiment:") not in labels


def test_a_lora_fine_tune_trains_only_the_adapters_and_saves_a_merged_plain_model(
    workspace, straight_runs
):
    out, metrics = straight_runs["lora"]
    base = load_model(workspace / "llama")
    final = load_model(out / "final")  # strict: exactly the plain GPT keys
    start, end = base.state_dict(), final.state_dict()
    assert set(end) == set(start)
    assert json.loads((out / "final" / "model_config.json").read_text()) == base.config.to_dict()
    adapted = {
        f"{name}.weight"
        for name, m in base.named_modules()
        if isinstance(m, nn.Linear) and any(name.endswith("." + t) for t in LORA_TARGETS)
    }
    assert len(adapted) == 5 * 2
    expected = sum(4 * (m.in_features + m.out_features) for n, m in base.named_modules()
                   if f"{n}.weight" in adapted)  # fmt: skip
    assert metrics["trainable_params"] == expected
    for key in start:  # frozen weights bit-identical, adapted ones moved by the merge
        assert torch.equal(start[key], end[key]) == (key not in adapted), key

    # each checkpoint holds frozen bases equal to the start and trained adapters; final/ is the
    # last one's merge, W + alpha / rank * B A, and best/ the merge of the best one
    checkpoints = dict(complete_checkpoints(out / "checkpoints"))
    assert sorted(checkpoints) == [10, 20]

    def merged(step: int) -> dict[str, torch.Tensor]:
        saved = safetensors.torch.load_file(checkpoints[step] / "model.safetensors")
        weights = {}
        for key in start:
            stem = key.removesuffix(".weight")
            if key not in adapted:
                name = "transformer.wte.weight" if key == "lm_head.weight" else key  # tied
                weights[key] = saved[name if name in saved else f"{stem}.base.bias"]
                continue
            assert torch.equal(saved[f"{stem}.base.weight"], start[key])
            delta = 2.0 * saved[f"{stem}.lora_B"] @ saved[f"{stem}.lora_A"]
            assert delta.abs().max() > 0
            weights[key] = start[key] + delta
        return weights

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    assert same(merged(20), end)
    best = json.loads((out / "checkpoints" / "best" / "best.json").read_text())
    assert best["val_loss"] == metrics["best_val_loss"] <= metrics["val_loss"]
    assert same(merged(best["step"]), load_model(out / "checkpoints" / "best").state_dict())
    assert metrics["val_loss"] == pytest.approx(sft_val_loss(final, workspace), rel=1e-4)
    before = sft_val_loss(base, workspace)
    print(f"LoRA fine-tune: held-out loss {before:.3f} -> {metrics['val_loss']:.3f}")
    assert metrics["val_loss"] < before - 1.5


class CrashAfter(pl.Callback):
    """Fault injection: the run dies once it has finished optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"injected crash after step {trainer.global_step}")


@pytest.mark.parametrize("kind", list(RUNS))
def test_a_crashed_fine_tune_resumes_to_the_weights_of_an_uninterrupted_run(
    workspace, straight_runs, kind
):
    from pipeline.train import run_training

    arch, lora = RUNS[kind]
    out = workspace / f"crashed-{kind}"
    request = make_request(workspace, out, arch, lora)
    with pytest.raises(RuntimeError, match="injected crash after step 15"):
        run_training(request, extra_callbacks=[CrashAfter(15)])
    assert [s for s, _ in complete_checkpoints(out / "checkpoints")] == [10]
    assert not (out / "final").exists()

    resumed = run_training(request)
    straight_out, straight = straight_runs[kind]
    assert resumed["resumed_from_step"] == 10 and resumed["steps"] == 20
    got, expected = (load_model(o / "final").state_dict() for o in (out, straight_out))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert resumed["val_loss"] == straight["val_loss"]
    assert resumed["train_loss"] == straight["train_loss"]
    assert load_config(out / "final") == load_config(workspace / arch)


def test_lora_with_trained_embeddings(workspace):
    """`train_embeddings`: the adapters and the (tied) token embedding train, nothing else."""
    from pipeline.train import run_training

    request = make_request(workspace, workspace / "lora-embeddings", "llama", True, max_steps=4,
                           val_every_steps=4, checkpoint_every_steps=4)  # fmt: skip
    request.lora.train_embeddings = True
    metrics = run_training(request)
    base = load_model(workspace / "llama")
    final = load_model(workspace / "lora-embeddings" / "final")
    start, end = base.state_dict(), final.state_dict()
    wte = "transformer.wte.weight"
    adapters = sum(4 * (m.in_features + m.out_features) for n, m in base.named_modules()
                   if isinstance(m, nn.Linear) and any(n.endswith("." + t) for t in LORA_TARGETS))  # fmt: skip
    assert metrics["trainable_params"] == adapters + start[wte].numel()
    assert not torch.equal(start[wte], end[wte])
    assert torch.equal(end[wte], end["lm_head.weight"])  # still tied
    norms = [k for k in start if "norm" in k or k.endswith(("ln_1.weight", "ln_2.weight"))]
    assert norms and all(torch.equal(start[k], end[k]) for k in norms)  # frozen


def test_a_training_process_gets_the_finetune_data_module_from_the_request_alone(tmp_path):
    """pipeline.train imports nothing from pipeline.finetune: a fresh process that imports only
    pipeline.train finds the "finetune" data module through the module the request names."""
    import os
    import subprocess
    import sys

    code = """
import sys
from pipeline.config import TrainConfig
from pipeline.model.config import GPTConfig
from pipeline.train.pretrain import make_data
from pipeline.train.request import SFTData, TrainRequest
assert "pipeline.finetune" not in sys.modules, "pipeline.train imported pipeline.finetune"
request = TrainRequest(
    model=GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=1, n_embd=8),
    train=TrainConfig(batch_size=2, val_batches=1),
    data=SFTData(examples_dir="ex"),
    out_dir="out",
    tokenizer_path="tok.json",
)
request = TrainRequest.from_json(request.to_json("request.json"))  # as the trainer reads it
data = make_data(request, request.train, 16)
print(type(data).__module__, type(data).__name__, data.block_size)
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pipeline.finetune.data", "SFTDataModule", "16"]
