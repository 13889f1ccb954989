"""How a CSV's text columns are read: as written. pandas, which ``datasets`` reads a CSV
with, guesses each column's type, so a column of numbers was integers ("not a text"), "007"
the number 7, and "NA", "None" or "null" a missing text. Fine-tuning's files
(``lmlab.data.examples``) and a ``data=hf`` CSV or TSV data file (``lmlab.data.sources``)
read their text columns through ``csv_texts``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:  # pandas' missing-value strings ("NA", "null"), as read_csv's default na_values
    from pandas._libs.parsers import STR_NA_VALUES
except ImportError:  # a private name: its documented list where a pandas moves it
    STR_NA_VALUES = {
        *("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"),
        *("1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"),
    }


def csv_texts(header: list[str], texts: Sequence[str]) -> dict[str, Any]:
    """``datasets``' CSV options that read the ``texts`` columns as written: pandas guesses
    each column's type, so a column of numbers was integers ("not a text"), "007" the number 7
    and "NA" or "null" a missing text. In a text column only an empty field is missing; the
    other columns keep pandas' guesses (integer labels are class ids)."""
    texts = [c for c in texts if c in header]
    if not texts:
        return {}
    missing = {c: [""] if c in texts else sorted(STR_NA_VALUES) for c in header}
    return {"converters": dict.fromkeys(texts, str), "keep_default_na": False, "na_values": missing}


def csv_header(path: Path, options: dict[str, Any]) -> list[str]:
    """The column names of the CSV data file ``path`` (compressed too, as pandas tells by its
    suffix), read with ``datasets``' CSV ``options`` (a TSV's separator); [] where pandas
    cannot read them (``datasets`` then says why)."""
    import pandas

    try:
        header = pandas.read_csv(path, nrows=0, encoding="utf-8-sig", **options)
    except Exception:  # not UTF-8, not a CSV: datasets' own reading names what is wrong
        return []
    return [str(name) for name in header.columns]
