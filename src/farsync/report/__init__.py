"""Reports: run summaries, plots and side-by-side comparison."""

from farsync.report.compare import compare_runs, format_table
from farsync.report.summary import build_summary, write_run_outputs

__all__ = ["build_summary", "compare_runs", "format_table", "write_run_outputs"]
