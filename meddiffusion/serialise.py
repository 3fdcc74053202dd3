"""JSON as the toolkit writes it (files and standard output): always valid, whatever the values.

Kept free of heavy imports (no torch, no numpy at import) so that the command line can print JSON quickly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def json_text(payload: Any) -> str:
    """Valid JSON (RFC 8259): NaN and infinities become ``null`` (a metric that is undefined for a case, e.g.
    HD95 of an empty region), numpy/torch values plain numbers, paths strings."""
    return json.dumps(plain(payload), indent=2, allow_nan=False)


def plain(value: Any) -> Any:
    """``value`` with only JSON types left: mappings, lists, str, int, finite float (else None), bool, None."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
