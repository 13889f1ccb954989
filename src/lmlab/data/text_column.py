"""What ``data.text_column`` of a ``data=hf`` data set must hold before its rows become
documents: strings (a null is a row without text), and strings that are UTF-8. Both are
checked on the whole column before a row is read, so that a bad data set is refused in one
line naming the column, its rows and the data set, not in a traceback from deep inside
``datasets`` or ``pyarrow``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmlab.config import DataConfig
from lmlab.errors import ConfigError

if TYPE_CHECKING:
    import datasets

# The ``datasets`` types of a column of text.
TEXT_TYPES = ("string", "large_string", "null")
# How many of the rows that are not UTF-8 a refusal names (then a count).
ROWS_SHOWN = 4


def check_text_column(ds: datasets.Dataset, cfg: DataConfig) -> None:
    """``data.text_column`` holds text (nulls allowed): a column of numbers, lists or records
    is refused naming its type and the columns that are text, before any row is read (each
    value was a traceback at its first use as text); and so is a column whose strings are
    not all UTF-8 (``check_utf8``)."""
    import datasets

    def is_text(feature: object) -> bool:
        return isinstance(feature, datasets.Value) and feature.dtype in TEXT_TYPES

    feature = ds.features[cfg.text_column]
    if not is_text(feature):
        texts = [name for name, f in ds.features.items() if is_text(f)]
        raise ConfigError(
            f"data.text_column={cfg.text_column!r} of {cfg.name!r} holds {feature}, not text; "
            f"allowed: a column of strings ({', '.join(texts) or 'none here'})"
        )
    check_utf8(ds, cfg)


def check_utf8(ds: datasets.Dataset, cfg: DataConfig) -> None:
    """Every string of ``data.text_column`` is UTF-8. Arrow's JSON reader keeps a string's
    bytes as the file has them (a JSON Lines file saved in Latin-1 or cp1252, ``café`` as
    ``caf\\xe9``), so such a column loads, and its first use as Python text was a bare
    UnicodeDecodeError naming neither the file nor the row. Arrow validates the column in one
    pass; only a column that fails is read row by row, to name the rows (counted from 1, as a
    JSON Lines file's lines are) and the offset of each one's first bad byte."""
    import pyarrow as pa

    column = ds.with_format("arrow")[cfg.text_column]  # the dataset's rows, in its order
    try:
        column.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    bad = []
    for row, raw in enumerate(column.cast(pa.large_binary()).to_pylist()):
        try:
            (raw or b"").decode("utf-8")
        except UnicodeDecodeError as err:
            bad.append(f"{row + 1} (byte {err.start})")
    if not bad:  # invalid in another way than its text: datasets' own reading says how
        return
    more = f" and {len(bad) - ROWS_SHOWN} more" if len(bad) > ROWS_SHOWN else ""
    raise ConfigError(
        f"data.text_column={cfg.text_column!r} of {cfg.name!r} is not UTF-8 text in "
        f"{len(bad)} of its rows: {'row' if len(bad) == 1 else 'rows'} "
        f"{', '.join(bad[:ROWS_SHOWN])}{more}; "
        "allowed: UTF-8 text (convert the file, e.g. iconv -f CP1252 -t UTF-8)"
    )
