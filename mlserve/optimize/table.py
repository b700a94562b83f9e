"""The results table the CLI prints and the README quotes."""

from __future__ import annotations

from mlserve.optimize.pipeline import Report, Row

_HEADER = ("candidate", "status", "top-1", "cosine", "max|diff|", "p50 ms", "p99 ms", "rows/s", "speedup", "MiB")


def _cells(row: Row, base_throughput: float) -> tuple[str, ...]:
    f = row.figures
    if f is None:
        return (row.name, row.status, *[""] * (len(_HEADER) - 2))
    top1 = "" if f.top1_agreement is None else f"{f.top1_agreement:.4f}"
    cosine = "" if f.cosine is None else f"{f.cosine:.5f}"
    speedup = f"{f.throughput_rps / base_throughput:.2f}x" if base_throughput else ""
    return (row.name, row.status, top1, cosine, f"{f.max_abs_diff:.3g}", f"{f.p50_ms:.3f}", f"{f.p99_ms:.3f}",
            f"{f.throughput_rps:,.0f}", speedup, f"{f.num_bytes / 2**20:.2f}")


def render(report: Report) -> str:
    """A Markdown table (speedup against the source's throughput), then notes and the outcome."""
    base = report.rows[0].figures.throughput_rps if report.rows and report.rows[0].figures else 0.0
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(_cells(r, base)) + " |" for r in report.rows]
    notes = [f"- {r.name}: {r.reason}" for r in report.rows if r.reason]
    if notes:
        lines += ["", *notes]
    if report.published_version is not None:
        lines += ["", f"published {report.winner} as version {report.published_version}"]
    elif report.winner:
        lines += ["", f"best candidate: {report.winner} (not published)"]
    else:
        lines += ["", f"nothing published: {report.reason}"]
    return "\n".join(lines)
