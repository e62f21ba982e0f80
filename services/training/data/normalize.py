"""Text normalization applied to every example before redaction, dedup and tokenization."""

from __future__ import annotations

import re
import unicodedata

# Removed: C0/C1 controls except \t and \n, lone surrogates, and invisible format characters
# that only hide text from review and from PII patterns (zero-width space, word joiner, BOM,
# soft hyphen, Mongolian vowel separator). Joiners (U+200C/D) and bidi marks stay: scripts
# and emoji need them.
_REMOVED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u200b\u2060\ufeff\u00ad\u180e]")
_NEWLINES = re.compile(r"\r\n|[\r\u2028\u2029\x85]")
_HSPACE = re.compile(r"[^\S\n]+")
_TRAILING = re.compile(r"[^\S\n]+$", re.M)


def _space(match: re.Match[str]) -> str:
    run = match.group()
    return run if run in (" ", "\t") else " "


def normalize_text(text: str) -> str:
    """Normalize ``text``: unify newlines to ``\\n``, drop control characters (except ``\\n`` and
    ``\\t``), lone surrogates and invisible format characters, apply Unicode NFKC, collapse runs
    of horizontal whitespace to one space, strip trailing whitespace on each line, trim.

    Idempotent: ``normalize_text(normalize_text(s)) == normalize_text(s)``. NFKC runs after the
    removals so that characters meeting across a removed one are composed in the first pass.
    """
    text = _REMOVED.sub("", _NEWLINES.sub("\n", text))
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    text = _HSPACE.sub(_space, text)
    text = _TRAILING.sub("", text)
    return text.strip()
