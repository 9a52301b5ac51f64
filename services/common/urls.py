"""The one rule for a source URL's scheme, shared by the API, the fetcher core and the download guard."""
from __future__ import annotations

SCHEMES = ("http", "https")


def has_web_scheme(url: str) -> bool:
    """True for http:// and https:// URLs (any case); the guard checks the rest of the URL."""
    scheme, separator, _rest = url.partition("://")
    return bool(separator) and scheme.lower() in SCHEMES
