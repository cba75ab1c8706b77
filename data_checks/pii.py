"""Possible personal data in text: e-mail addresses, phone numbers, payment-card numbers.

Deliberately simple patterns: they flag what deserves a look (a warning with counts) or redact
when asked; they are not a compliance tool.
"""

import re

PATTERNS = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    # 13-19 digits, optionally grouped by spaces or dashes, confirmed by the Luhn checksum below.
    "card": re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),
    # International or North-American style numbers with at least 9 digits.
    "phone": re.compile(r"(?<![\w@])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}[ .-]\d{3,4}[ .-]\d{3,4}\b"),
}
REDACTED = {"email": "[EMAIL]", "card": "[CARD]", "phone": "[PHONE]"}
# What each pattern needs before it can match at all: an "@", or this many digits (card: 13;
# phone: 2+3+3). Most texts have neither, and counting is several times cheaper than the patterns.
MIN_DIGITS = {"card": 13, "phone": 8}
DIGIT = re.compile(r"\d")
# Part of every phone number: a group's last two digits, a separator, the next group's first three.
PHONE_CORE = re.compile(r"\d\d[ .-]\d\d\d")


def digit_count(text: str) -> int:
    """How many characters of `text` the patterns' `\\d` matches."""
    if text.isascii():  # only 0-9 are digits: str.count is faster than a regex
        return sum(map(text.count, "0123456789"))
    return len(DIGIT.findall(text))


def may_match(kind: str, text: str, digits: int) -> bool:
    """False when pattern `kind` cannot match `text`, which holds `digits` digits."""
    if kind == "email":
        return "@" in text
    return digits >= MIN_DIGITS[kind] and (kind != "phone" or PHONE_CORE.search(text) is not None)


def luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for d in reversed(digits):
        n = int(d) * (2 if double else 1)
        total += n - 9 if n > 9 else n
        double = not double
    return total % 10 == 0


def _matches(kind: str, text: str):
    for m in PATTERNS[kind].finditer(text):
        if kind == "card" and not luhn_ok(re.sub(r"\D", "", m.group())):
            continue
        yield m


def scan(text: str) -> tuple[str, dict[str, int]]:
    """`text` with each match replaced by a placeholder such as [EMAIL], and the count of each kind.

    Kinds are handled in order, each on the text already redacted of the earlier ones, so a card
    number is not counted again as a phone number.
    """
    counts, digits = {}, digit_count(text)  # redacting only removes digits: still an upper bound
    for kind in ("email", "card", "phone"):
        spans = [m.span() for m in _matches(kind, text)] if may_match(kind, text, digits) else []
        if spans:
            counts[kind] = len(spans)
        for start, end in reversed(spans):
            text = text[:start] + REDACTED[kind] + text[end:]
    return text, counts
