"""The try-it page of `llmpipe serve-model`: page.html, and its task presets.

In: nothing. Out: `PAGE` (the HTML file: a prompt box, the presets, every served model's
streamed answer side by side) and `presets()`, the application tasks written in the fine-tuning
prompt formats (pipeline/finetune/examples.py), so that a fine-tuned model sees what it learned.
"""

from __future__ import annotations

from pathlib import Path

PAGE = Path(__file__).with_name("page.html")


def presets() -> list[dict[str, str]]:
    """The page's tasks, written in the fine-tuning prompt formats (pipeline.finetune)."""
    from pipeline.config import TASK_TYPES

    samples = [
        (
            "Question answering",
            "qa",
            {
                "context": "Botchan is a novel by Natsume Soseki, published in 1906. Its hero "
                "is a young teacher from Tokyo sent to a school in Shikoku.",
                "question": "Who wrote Botchan?",
            },
        ),
        (
            "Summarize",
            "summarization",
            {
                "article": "The city council voted on Tuesday to extend the tram line to the "
                "harbour. Work starts in spring and the first trams should run within two "
                "years. Shop owners along the route asked for help during the building work."
            },
        ),
        (
            "Translate",
            "translation",
            {
                "source": "The weather is fine today.",
                "source_language": "English",
                "target_language": "French",
            },
        ),
        (
            "Sentiment",
            "classification",
            {"text": "The film was a delight from start to finish: warm, funny and clever."},
        ),
    ]
    rows = [
        {"name": name, "task": task, "prompt": TASK_TYPES[task].default_prompt.format(**fields)}
        for name, task, fields in samples
    ]
    rows.append({"name": "Free text", "task": "text", "prompt": "The history of"})
    return rows
