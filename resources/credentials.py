"""Credentials inside connection URLs: shown masked wherever a URL is printed, logged or recorded.

Passwords reach the project only through the environment (FT_POSTGRES_URL, MLFLOW_TRACKING_URI,
...). Anything that shows such a value to a person or stores it beside results (settings output,
error messages, logs, MLflow params and tags, Dagster metadata) shows `masked(value)` instead:

    >>> masked("postgresql://ft:s3cret@db.example.com:5432/ft")
    'postgresql://ft:***@db.example.com:5432/ft'
"""

import re

MASK = "***"
# scheme://user:password@ -- the password runs up to the last '@' before the host (an unencoded
# '@' in a password stays masked), never across a '/' or whitespace.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<password>[^\s/]*)@")
# libpq also takes the password as a query parameter: ...?password=s3cret
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&\s]+", re.IGNORECASE)


def masked(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***` (user, host and path kept)."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def has_password(url: str) -> bool:
    """Whether `url` carries a password (which must then never be shown as written)."""
    return masked(url) != url
