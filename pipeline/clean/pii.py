"""PII redaction: a text in, the text with email addresses, IP addresses and phone numbers
replaced by placeholders out, and how many of each were replaced.

The patterns lean towards precision: a phone number needs a recognisable shape (a `+` country
code, a `(555) 123-4567` area code, `555-123-4567` / `555.123.4567`, or a national number with a
leading trunk `0` such as `020 7946 0018`) and 7 to 15 digits, so years, prices and scores in
running text are left alone. An IP address must parse (`ipaddress`) and be a public one, as
datatrove's PII formatter does: `127.0.0.1` or `192.168.0.1` identify no one.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable

PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE_NUMBER>"}

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
# A run of hex groups and colons; `ipaddress` decides whether it really is an address.
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,5}){1,4}"  # +44 20 7946 0018
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}([.-])\d{3}\1\d{4}"  # 555-123-4567, 555.123.4567
    r"|0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}"  # 020 7946 0018
    r")(?![\w-]|\.\d)"
)


def _public_ip(candidate: str) -> bool:
    try:
        return ipaddress.ip_address(candidate).is_global
    except ValueError:
        return False


def _phone_like(candidate: str) -> bool:
    return 7 <= sum(c.isdigit() for c in candidate) <= 15


_CHECKS: dict[str, tuple[list[re.Pattern[str]], Callable[[str], bool] | None]] = {
    "email": ([_EMAIL], None),
    "ip": ([_IPV4, _IPV6], _public_ip),
    "phone": ([_PHONE], _phone_like),
}


def _replacer(
    kind: str, accept: Callable[[str], bool] | None, counts: Counter[str]
) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        if accept is not None and not accept(match.group(0)):
            return match.group(0)
        counts[kind] += 1
        return PLACEHOLDERS[kind]

    return replace


def redact_pii(text: str, kinds: Iterable[str]) -> tuple[str, Counter[str]]:
    """`text` with every match of `kinds` replaced by its placeholder; counts by kind."""
    counts: Counter[str] = Counter()
    for kind in kinds:
        patterns, accept = _CHECKS[kind]
        if kind == "email" and "@" not in text:
            continue
        for pattern in patterns:
            text = pattern.sub(_replacer(kind, accept, counts), text)
    return text, counts
