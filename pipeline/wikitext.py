"""WikiText-2 as lm-evaluation-harness scores it: whole articles, detokenized.

In: the raw WikiText text (`wiki.test.raw`, as the Hugging Face `Salesforce/wikitext` rows
concatenated). Out: one string per article ("page"): the ` = Title = ` heading line and every
line up to the next top-level heading, with the tokenizer's spacing undone by the same rules
lm-evaluation-harness's `wikitext` task applies (` @-@ ` -> `-`, ` , ` -> `, `, ...), so word
perplexity and bits per byte are computed over the text a reader would see.
"""

from __future__ import annotations

import re

# The harness's replacements, in its order: literal fixes, bracket and quote spacing, then the
# heading markers and leftovers.
LITERAL_FIXES = [
    ("s '", "s'"),
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
]
BRACKET_FIXES = [
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
]
TAIL_FIXES = [
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
]
# A top-level heading (" = Title = ") starts an article; " = = Section = = " does not.
ARTICLE_HEADING = re.compile(r"^ = ([^=].*?) = $")
# WikiText breaks some equations across lines, which leaves lines such as
# " = 1 rad / s and a nominal impedance k = " looking like headings. Article titles start with
# a capital (after any leading number), so a lowercase first word is not a title.
LOWERCASE_FIRST_WORD = re.compile(r"^[\d\W]*[a-z]")


def detokenize_wikitext(text: str) -> str:
    for old, new in LITERAL_FIXES:
        text = text.replace(old, new)
    for pattern, replacement in BRACKET_FIXES:
        text = pattern.sub(replacement, text)
    for old, new in TAIL_FIXES:
        text = text.replace(old, new)
    return text


def is_article_heading(line: str) -> bool:
    heading = ARTICLE_HEADING.match(line)
    return bool(heading) and not LOWERCASE_FIRST_WORD.match(heading.group(1))


def wikitext_pages(raw: str) -> list[str]:
    """The detokenized articles of a raw WikiText file, in file order."""
    pages: list[list[str]] = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        if is_article_heading(line):
            pages.append([line])
        elif pages:
            pages[-1].append(line)
    return [detokenize_wikitext("\n".join(lines).strip("\n")) for lines in pages]
