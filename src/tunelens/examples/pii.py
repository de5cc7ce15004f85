"""Flags for likely personal data in example text: e-mail addresses, phone numbers, card
numbers, IBANs.

These are heuristics for review, not a guarantee: a flagged row is kept out of
an export until someone looks at it (or asks for it with ``--include-flagged``),
and personal data in another shape (a name, a street address) is not found.

Text is NFKC-normalised first, so full-width forms (``john.doe＠example.com``,
full-width digits) read as their ASCII twins.

* ``email``: ``local@domain.tld`` (a dot-separated domain ending in 2+ letters),
  also written out as ``john [at] example [dot] com`` or ``(at)`` / ``(dot)``.
* ``card``: 13 to 19 digits, optionally grouped by single spaces, hyphens or dots,
  that pass the Luhn check (the checksum every payment card number carries), so
  an order number of the same length is flagged only one time in ten.
* ``phone``: 7 to 15 digits written like a phone number: starting with ``+`` or
  an area code in parentheses, or in at least two groups separated by spaces,
  dots or hyphens (``555-123-4567``, ``030 1234 5678``), or 10 to 11 unbroken
  digits starting with a trunk ``0`` (``03012345678``). Other unbroken runs of
  digits are not phone numbers (they are more often ids or amounts), nor are
  dates (``2024-05-01``, ``01.05.2024``), dotted IP addresses or card numbers.
* ``iban``: two letters, two check digits and 11 to 30 letters or digits
  (spaces allowed between them) that pass the ISO 13616 mod-97 check.
"""

from __future__ import annotations

import re
import unicodedata

FLAGS = ("email", "phone", "card", "iban")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])"
)
# Digits with optional single space / hyphen separators; 13-19 digits are checked after.
_CARD = re.compile(r"(?<![\d.-])\d(?:[ .-]?\d){12,18}(?![\d-]|\.\d)")
_PHONE = re.compile(
    r"(?<![\w+(])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,11}(?:[ .-]\d{1,8}){0,5}(?![\w])"
)
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
# "john [at] example [dot] com", "(at)", "{dot}": the written-out forms of @ and .
_SPELLED_AT = re.compile(r"\s*[\[({<]\s*at\s*[\])}>]\s*", re.IGNORECASE)
_SPELLED_DOT = re.compile(r"\s*[\[({<]\s*dot\s*[\])}>]\s*", re.IGNORECASE)
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
    """Phone-number-like substrings (see the module docstring), card numbers and IBANs
    excluded."""
    cards = find_cards(text) + find_ibans(text)
    found = []
    for match in _PHONE.finditer(text):
        candidate = match.group().strip()
        if _looks_like_phone(candidate) and not any(candidate in card for card in cards):
            found.append(candidate)
    return found


def find_emails(text: str) -> list[str]:
    """E-mail addresses in ``text``, written-out ``[at]`` / ``[dot]`` forms included."""
    spelled = _SPELLED_DOT.sub(".", _SPELLED_AT.sub("@", text))
    return [m.group() for m in _EMAIL.finditer(spelled)]


def iban_valid(text: str) -> bool:
    """The ISO 13616 mod-97 check of an IBAN (spaces ignored): True when it checks out."""
    compact = text.replace(" ", "").upper()
    if not (15 <= len(compact) <= 34 and compact.isalnum() and compact.isascii()):
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def find_ibans(text: str) -> list[str]:
    """IBAN-like substrings that pass the mod-97 check, as written."""
    return [m.group() for m in _IBAN.finditer(text) if iban_valid(m.group())]


def pii_flags(*texts: str | None) -> tuple[str, ...]:
    """The kinds of likely personal data in any of ``texts``, in ``FLAGS`` order."""
    joined = unicodedata.normalize("NFKC", "\n".join(t for t in texts if t))
    found = {
        "email": bool(find_emails(joined)),
        "phone": bool(find_phones(joined)),
        "card": bool(find_cards(joined)),
        "iban": bool(find_ibans(joined)),
    }
    return tuple(flag for flag in FLAGS if found[flag])
