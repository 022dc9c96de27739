"""Clean: document shards in, normalized and quality-filtered document shards out.

In: a folder of document shards and a `CleanConfig`. Out: the kept documents as shards (their
quality signals in `meta["signals"]`), `_quarantine.jsonl` with each rejected document and the
rule that rejected it, `signals.parquet` with every document's signals, and a manifest body.

    run_clean(in_dir, out_dir, cfg) -> manifest body
    rule_effects(clean_dir, cfg) -> the counts other thresholds would give, from stored signals
"""

from pipeline.clean.normalize import normalize_text
from pipeline.clean.quality import QualityRule, compute_signals, quality_rules
from pipeline.clean.stage import SIGNALS_FILE, rule_effects, run_clean

CODE_VERSION = 1  # bump when the documents clean writes would change

__all__ = [
    "CODE_VERSION",
    "SIGNALS_FILE",
    "QualityRule",
    "compute_signals",
    "normalize_text",
    "quality_rules",
    "rule_effects",
    "run_clean",
]
