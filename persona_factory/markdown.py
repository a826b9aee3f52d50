"""Markdown for cards and reports, without the publishing stack (the audit command imports it too)."""

from __future__ import annotations


def markdown_table(header: tuple[str, ...] | list[str], rows) -> str:
    """A markdown table, or "None." when there are no rows (a section never disappears from the card)."""
    rows = list(rows)
    if not rows:
        return "None."
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in r) + " |" for r in rows])
