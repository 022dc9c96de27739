"""Credentials inside URIs (`scheme://user:password@host/...`): found, hidden, kept out of files.

In: any text that may hold such a URI (an MLflow tracking URI, a database URL, a log line).
Out: `redact(text)`, the text with each `user:password@` replaced by `***:***@`, and
`has_credentials(text)`. The pipeline writes URIs only redacted; the full one reaches a process
that needs it through its environment (`MLFLOW_TRACKING_URI`, see pipeline/train/request.py).
"""

from __future__ import annotations

import re

_URI_CREDENTIALS = re.compile(r"(//)[^/@\s:]+:[^/@\s]+@")
REDACTED = "***:***@"


def redact(text: str) -> str:
    """Hide `user:password@` in URIs."""
    return _URI_CREDENTIALS.sub(lambda match: match.group(1) + REDACTED, text)


def has_credentials(text: str) -> bool:
    return redact(text) != text
