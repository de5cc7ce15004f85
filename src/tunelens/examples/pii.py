"""Flags for likely personal data in example text: e-mail addresses, phone numbers, card numbers.

These are heuristics for review, not a guarantee: a flagged row is kept out of
an export until someone looks at it (or asks for it with ``--include-flagged``),
and personal data in another shape (a name, a street address) is not found.

* ``email``: ``local@domain.tld`` (a dot-separated domain ending in 2+ letters).
* ``card``: 13 to 19 digits, optionally grouped by single spaces or hyphens,
  that pass the Luhn check (the checksum every payment card number carries), so
  an order number of the same length is flagged only one time in ten.
* ``phone``: 7 to 15 digits written like a phone number: starting with ``+`` or
  an area code in parentheses, or in at least two groups separated by spaces,
  dots or hyphens (``555-123-4567``, ``030 1234 5678``), or 10 to 11 unbroken
  digits starting with a trunk ``0`` (``03012345678``). Other unbroken runs of
  digits are not phone numbers (they are more often ids or amounts), nor are
  dates (``2024-05-01``, ``01.05.2024``), dotted IP addresses or card numbers.
"""

from __future__ import annotations

import re

FLAGS = ("email", "phone", "card")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])"
)
# Digits with optional single space / hyphen separators; 13-19 digits are checked after.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+(])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,11}(?:[ .-]\d{1,8}){0,5}(?![\w])"
)
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a digit string (payment cards, IMEIs): True when it checks out."""
    if not digits.isdigit():
        return False
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def find_cards(text: str) -> list[str]:
    """Card-number-like substrings (13-19 digits, Luhn-valid), as written."""
    found = []
    for match in _CARD.finditer(text):
        digits = _digits(match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(match.group())
    return found


def _looks_like_phone(candidate: str) -> bool:
    digits = _digits(candidate)
    if not 7 <= len(digits) <= 15:
        return False
    if _DATE.fullmatch(candidate) or _DOTTED_QUAD.fullmatch(candidate):
        return False
    if candidate.startswith(("+", "(")):
        return True
    if candidate.isdigit():  # unbroken: only a national number with its trunk 0 (0301234567)
        return candidate.startswith("0") and 10 <= len(candidate) <= 11
    groups = re.split(r"[ .-]", candidate)
    return len(groups) >= 2 and all(len(g) >= 2 for g in groups[1:])


def find_phones(text: str) -> list[str]:
    """Phone-number-like substrings (see the module docstring), card numbers excluded."""
    cards = find_cards(text)
    found = []
    for match in _PHONE.finditer(text):
        candidate = match.group().strip()
        if _looks_like_phone(candidate) and not any(candidate in card for card in cards):
            found.append(candidate)
    return found


def find_emails(text: str) -> list[str]:
    """E-mail addresses in ``text``."""
    return [m.group() for m in _EMAIL.finditer(text)]


def pii_flags(*texts: str | None) -> tuple[str, ...]:
    """The kinds of likely personal data in any of ``texts``, in ``FLAGS`` order."""
    joined = "\n".join(t for t in texts if t)
    found = {
        "email": bool(find_emails(joined)),
        "phone": bool(find_phones(joined)),
        "card": bool(find_cards(joined)),
    }
    return tuple(flag for flag in FLAGS if found[flag])
