"""Plain-text tables for terminal summaries (dataset checks, benchmarks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def format_table(rows: Sequence[dict]) -> str:
    """Rows of dicts as a fixed-width text table (columns in first-seen order; floats to 4 significant digits)."""
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:  # nested figures (mappings) belong in a results JSON, not in the table
        columns += [k for k in row if k not in columns and not isinstance(row[k], Mapping)]

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
        return "" if value is None else str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
