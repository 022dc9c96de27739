"""Text generation from a saved model: a checkpoint folder or an MLflow model URI in, text out.

`resolve_model_dir` turns what a user names (a `final/` or checkpoint folder, a pretrain stage
output, `models:/NAME@alias`, `runs:/...`) into a local folder holding `model.safetensors`,
`model_config.json` and `tokenizer.json`; `load_generator` loads it; `generate_texts` samples.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from pipeline.model.checkpoint import load_model
from pipeline.model.gpt import GPT
from pipeline.model_uris import download, is_mlflow_uri
from pipeline.special_tokens import EOT_TOKEN as EOT

MODEL_FILES = ("model.safetensors", "model_config.json")


def _find_model_dir(root: Path) -> Path | None:
    """The folder under `root` (itself first, then `final/`, then any depth) with a model."""
    for candidate in (root, root / "final"):
        if all((candidate / f).is_file() for f in MODEL_FILES):
            return candidate
    for weights in sorted(root.rglob("model.safetensors")):
        if (weights.parent / "model_config.json").is_file():
            return weights.parent
    return None


def resolve_model_dir(model: str, tracking_uri: str | None = None) -> Path:
    """A local folder with the model files, downloading from MLflow for `models:/`/`runs:/`."""
    if is_mlflow_uri(model):
        local = download(model, tracking_uri)
    else:
        local = Path(model)
        if not local.exists():
            raise FileNotFoundError(f"no such model folder or MLflow URI: {model}")
    found = _find_model_dir(local)
    if found is None:
        raise FileNotFoundError(
            f"{model}: no model.safetensors + model_config.json found in {local}"
        )
    return found


def load_generator(model: str, tracking_uri: str | None = None) -> tuple[GPT, Tokenizer]:
    folder = resolve_model_dir(model, tracking_uri)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{folder}: tokenizer.json is missing beside the weights")
    net = load_model(folder)
    net.eval()
    return net, Tokenizer.from_file(str(tokenizer_file))


def generate_texts(
    net: GPT,
    tokenizer: Tokenizer,
    prompts: list[str],
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int | None = None,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Prompt + continuation for each prompt, stopping at end-of-text. Temperature 0 is greedy;
    `repetition_penalty` > 1 discourages tokens already in the text (GPT.generate)."""
    eot_id = tokenizer.token_to_id(EOT)
    device = next(net.parameters()).device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    outputs = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt).ids or [eot_id]  # an empty prompt starts a new document
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        out = net.generate(
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            eos_id=eot_id,
            generator=generator,
            repetition_penalty=repetition_penalty,
        )
        new = [t for t in out[0, len(ids) :].tolist()]
        if eot_id in new:
            new = new[: new.index(eot_id)]
        outputs.append(prompt + tokenizer.decode(new, skip_special_tokens=True))
    return outputs
