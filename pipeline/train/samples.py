"""Sample generations during pretraining: what the model writes after each validation.

In: the running Trainer and LitGPT, a tokenizer.json, prompts and a token budget.
Out: `<out_dir>/samples/step-NNNNNN.txt` on rank 0, also logged as an MLflow artifact
(`samples/step-NNNNNN.txt`) of the run the Trainer's MLFlowLogger writes to.

Sampling uses its own seeded generator and the uncompiled forward (`GPT.generate` calls
`forward`), so it neither moves the training RNG (a resumed run stays bit-exact) nor makes
torch.compile recompile for the generation shapes. Skipped under FSDP, where no single rank
holds the whole model.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.trainer.states import TrainerFn

from pipeline.train.checkpoints import step_folder_name


class SampleGenerations(pl.Callback):
    def __init__(
        self,
        tokenizer_path: str | Path,
        prompts: list[str],
        max_new_tokens: int,
        out_dir: Path,
        seed: int = 0,
        temperature: float = 0.8,
        top_k: int | None = 50,
    ):
        self.tokenizer_path = Path(tokenizer_path)
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.temperature = temperature
        self.top_k = top_k
        from tokenizers import Tokenizer

        # loaded now: a broken tokenizer fails the run at its start, not at the first validation
        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_path))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if not trainer.is_global_zero or "fsdp" in type(trainer.strategy).__name__.lower():
            return
        from pipeline.generate import generate_texts

        step = trainer.global_step
        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            texts = generate_texts(
                model,
                self.tokenizer,
                self.prompts,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_k=self.top_k,
                seed=self.seed + step,
            )
        finally:
            model.train(was_training)
        name = f"{step_folder_name(step)}.txt"
        body = "".join(
            f"--- prompt {prompt!r}\n{text}\n\n"
            for prompt, text in zip(self.prompts, texts, strict=True)
        )
        path = self.out_dir / "samples" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_text(logger.run_id, body, f"samples/{name}")
