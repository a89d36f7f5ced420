"""The per-job report: ``report.html`` (self-contained) and its PNG figures, from report.json's dict."""

from autoprune.report.write import write_report_files

__all__ = ["write_report_files"]
