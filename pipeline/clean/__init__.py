"""Clean: document shards in, repaired, edited and quality-filtered document shards out.

In: a folder of document shards and a `CleanConfig`. Out: the kept documents as shards (their
quality signals in `meta["signals"]`), `_quarantine.jsonl` with each rejected document and the
rule that rejected it, `signals.parquet` with every document's signals, and a manifest body
with per-rule removals, examples of removed documents and counts of edits.

    run_clean(in_dir, out_dir, cfg, executor) -> manifest body
    rule_effects(clean_dir, cfg) -> the counts other thresholds would give, from stored signals
"""

from pipeline.clean.lines import c4_line_edits
from pipeline.clean.normalize import normalize_text, repair_unicode
from pipeline.clean.pii import redact_pii
from pipeline.clean.quality import SIGNAL_NAMES, QualityRule, compute_signals, quality_rules
from pipeline.clean.stage import SIGNALS_FILE, clean_shard, clean_text, rule_effects, run_clean

CODE_VERSION = 2  # bump when the documents clean writes would change

__all__ = [
    "CODE_VERSION",
    "SIGNALS_FILE",
    "SIGNAL_NAMES",
    "QualityRule",
    "c4_line_edits",
    "clean_shard",
    "clean_text",
    "compute_signals",
    "normalize_text",
    "quality_rules",
    "redact_pii",
    "repair_unicode",
    "rule_effects",
    "run_clean",
]
