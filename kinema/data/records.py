"""JSON-lines files of records (captions files, prompt lists), read with one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ..errors import KinemaError


def read_records(path: str | os.PathLike, keys: Sequence[str], *, example: str) -> list[dict]:
    """The JSON objects of a jsonl file, one per non-empty line, each holding every key of ``keys``.

    Args:
        path: the file.
        keys: keys every line must have, each with a string value.
        example: an example line, quoted in the error when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise KinemaError(f"{path} not found; it needs one JSON object per line, like {example}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise KinemaError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON lines") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise KinemaError(f"{path}:{n} is not valid JSON: {e}") from None
        missing = [k for k in keys if not isinstance(record, dict) or k not in record]
        if missing:
            raise KinemaError(f"{path}:{n} lacks {', '.join(missing)}; every line needs {', '.join(keys)}")
        not_text = [k for k in keys if not isinstance(record[k], str)]
        if not_text:
            raise KinemaError(f"{path}:{n} has {not_text[0]} {json.dumps(record[not_text[0]])}; it must be a string")
        records.append(record)
    if not records:
        raise KinemaError(f"{path} lists nothing")
    return records
