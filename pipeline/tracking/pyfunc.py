"""The MLflow pyfunc flavor of a GPT: `mlflow.pyfunc.load_model("models:/NAME@champion")`
then `.predict(["prompt", ...])` returns generated texts.

In: the `model_dir` artifact (safetensors weights, model config, tokenizer.json). Out: a list of
strings. The model is logged as "models from code" (`pyfunc_entry.py`), so loading it unpickles
nothing.
"""

from __future__ import annotations

import warnings
from typing import Any

import mlflow.pyfunc
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

GENERATION_PARAMS = {
    "max_new_tokens": 50,
    "temperature": 0.8,
    "top_k": 50,
    "seed": 0,
    "repetition_penalty": 1.0,
}

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema(
        [
            ParamSpec("max_new_tokens", "long", GENERATION_PARAMS["max_new_tokens"]),
            ParamSpec("temperature", "double", GENERATION_PARAMS["temperature"]),
            ParamSpec("top_k", "long", GENERATION_PARAMS["top_k"]),
            ParamSpec("seed", "long", GENERATION_PARAMS["seed"]),
            ParamSpec("repetition_penalty", "double", GENERATION_PARAMS["repetition_penalty"]),
        ]
    ),
)


def _prompts(model_input: Any) -> list[str]:
    """Prompts from a list, a DataFrame (REST server) or a numpy array."""
    if hasattr(model_input, "columns"):  # pandas DataFrame
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(v) for v in model_input[column].tolist()]
    if hasattr(model_input, "tolist"):
        model_input = model_input.tolist()
    if isinstance(model_input, str):
        return [model_input]
    return [
        p if isinstance(p, str) else str(p[0] if isinstance(p, (list, tuple)) else p)
        for p in model_input
    ]


# MLflow's type-hint signatures cannot carry generation params, so predict() has no hints and
# SIGNATURE says what it takes; MLflow advises adding hints whenever the class is defined or
# loaded, under its own `simplefilter("once")` (a warnings filter cannot hide it): drop that one
# message where warnings are shown.
NO_TYPE_HINTS_ADVICE = "Add type hints to the `predict` method"


def hide_warnings(*fragments: str) -> None:
    """Make `warnings.showwarning` drop warnings whose message contains one of `fragments`
    (once per fragment per process; every other warning is shown as before)."""
    hidden = getattr(warnings.showwarning, "llmpipe_hidden", None)
    if hidden is not None:
        hidden.update(fragments)
        return
    show = warnings.showwarning
    hidden = set(fragments)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not any(fragment in str(message) for fragment in hidden):
            show(message, category, filename, lineno, file, line)

    showwarning.llmpipe_hidden = hidden
    warnings.showwarning = showwarning


hide_warnings(NO_TYPE_HINTS_ADVICE)


class GPTTextGenerator(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from pipeline.generate import load_generator

        self.net, self.tokenizer = load_generator(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        from pipeline.generate import generate_texts

        settings = {**GENERATION_PARAMS, **(params or {})}
        return generate_texts(
            self.net,
            self.tokenizer,
            _prompts(model_input),
            max_new_tokens=int(settings["max_new_tokens"]),
            temperature=float(settings["temperature"]),
            top_k=int(settings["top_k"]) or None,
            seed=int(settings["seed"]),
            repetition_penalty=float(settings["repetition_penalty"]),
        )
