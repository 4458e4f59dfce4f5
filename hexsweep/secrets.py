"""Passwords in URLs never reach a file: ``redact`` masks them wherever a command line, a config
or a storage URL is written down (job folders, sweep manifests, logs, reports)."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(://[^:/@\s]+):[^@/\s]*@")


def redact(text: str | None) -> str | None:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``, anywhere in ``text``."""
    if text is None:
        return None
    return _PASSWORD.sub(r"\1:***@", text)
