"""Tables for people: one DataFrame as Markdown, CSV or a rich terminal table, and the format flag."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ReportError
from ..files import write_owned

FORMATS = ("md", "csv")


def check_format(fmt: str) -> str:
    """The output format, or ReportError naming --format."""
    if fmt not in FORMATS:
        raise ReportError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    return fmt


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if column == "params" else str(int(value))
    if isinstance(value, (float, np.floating)):
        if "epoch" in column or column in ("lr", "grad_clip", "batch"):
            return f"{value:g}"
        return f"{value:+.4f}" if column.endswith("diff") else f"{value:.4f}"
    return str(value)


def _numeric(table: pd.DataFrame, column: str) -> bool:
    return pd.api.types.is_numeric_dtype(table[column]) and not pd.api.types.is_bool_dtype(
        table[column])


def fold_spread(table: pd.DataFrame) -> pd.DataFrame:
    """For people: a column X with its X_sd beside it shown as one column 'X ± sd'."""
    spread = [c for c in table.columns if c.endswith("_sd") and c[:-3] in table.columns]
    if not spread:
        return table
    out = table.copy()
    for sd in spread:
        value = sd[:-3]
        out[value] = [_cell(value, v) if not isinstance(s, float) or math.isnan(s)
                      else f"{_cell(value, v)} ± {s:.4f}" for v, s in zip(table[value], table[sd])]
    return out.drop(columns=spread)


def _spread_column(table: pd.DataFrame, column: str) -> bool:
    return table[column].astype(str).str.contains(" ± ", regex=False).any()


def format_cells(table: pd.DataFrame) -> list[list[str]]:
    """Every cell as display text: 4 decimals for accuracies and cosines, '—' where empty."""
    return [[_cell(c, v) for c, v in zip(table.columns, row)]
            for row in table.astype(object).itertuples(index=False)]


def _esc(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe inside a cell would end it


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned, repeats as mean ± sd."""
    table = fold_spread(table)
    head = "| " + " | ".join(_esc(c) for c in table.columns) + " |"
    rule = "| " + " | ".join("---:" if _numeric(table, c) or _spread_column(table, c) else "---"
                             for c in table.columns) + " |"
    body = ["| " + " | ".join(_esc(x) for x in row) + " |" for row in format_cells(table)]
    return "\n".join([head, rule, *body]) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """CSV with the run's own precision (metrics.csv is written with 8 significant digits)."""
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.8g")
    return buf.getvalue()


def _short_header(column: str) -> str:
    # Terminal headers only: files keep the full column names that scripts rely on.
    if column.endswith("_paper"):
        return "paper"
    for long, short in (("test_acc_", "acc "), ("cos_param_", "cos_p "), ("cos_func_", "cos_f "),
                        ("epoch_ep", "epoch@")):
        column = column.replace(long, short)
    return column.replace("_", " ")


def to_rich(table: pd.DataFrame, title: str):
    """The same table for the terminal (short headers, numbers never wrapped)."""
    from rich.table import Table as RichTable

    table = fold_spread(table)
    out = RichTable(title=title, title_justify="left")
    for c in table.columns:
        numeric = _numeric(table, c)
        out.add_column(_short_header(c), justify="right" if numeric else "left", no_wrap=numeric)
    for row in format_cells(table):
        out.add_row(*row)
    return out


def write_text(path: str | Path, text: str) -> Path:
    """Write a file of a taylorcli folder atomically (files.py's rule), or one line why not."""
    path = Path(path)
    try:
        write_owned(path, text.encode())
    except OSError as e:
        raise ReportError(f"--out {path}: cannot write there ({e.strerror or e})") from None
    return path
