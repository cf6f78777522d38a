"""Reading JSON documents a user hands us, with one typed error for every way it can fail.

``json.loads`` raises ``JSONDecodeError`` for syntax, but plain ``ValueError`` for an
integer over Python's digit limit and ``RecursionError`` for deep nesting; files can be
missing, unreadable or not UTF-8. All of these become the caller's error class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .errors import DualrateError


def parse_json(text: str, where: str, error: type[DualrateError], **loads_kw: Any) -> Any:
    try:
        return json.loads(text, **loads_kw)
    except DualrateError:
        raise                                   # raised by a hook such as parse_constant
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{where} is not valid JSON ({str(exc)[:200]})") from None


def read_json(path: Path, where: str, error: type[DualrateError],
              missing: Callable[[], DualrateError] | None = None) -> Any:
    """Parse the JSON file at ``path``; ``missing`` builds the error for a file that does not exist."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise (missing() if missing else error(f"{where} not found")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{where} cannot be read ({exc})") from None
    return parse_json(text, where, error)
