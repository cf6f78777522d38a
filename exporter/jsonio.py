"""Reading the files a user hands us (JSON documents, npz arrays), with one typed error for every way it can fail.

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


def read_npz(path: Path, where: str) -> dict[str, Any]:
    """Arrays of a user's ``.npz`` by name, read without pickles; BadInputError naming the file."""
    import numpy as np

    from .errors import BadInputError

    try:
        with np.load(Path(path), allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise BadInputError(f"{where} {path}: expected an .npz archive of named arrays, found one array")
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise BadInputError(f"{where} {path} not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise BadInputError(f"{where} {path} cannot be read as .npz without pickles ({exc})") from None
