"""The accuracy ledger (``python -m benchmarks.ledger``): segzoo models beside a peer library's same architecture,
trained on the real-data tiles under one recipe and scored by one evaluation (it imports the peers, so it
lives in the repository's benchmarks/, not in the installed package)."""

from .cases import CASES, Case, Metric
from .report import END_MARKER, START_MARKER, markdown_report, replace_section, summarise
from .run import crosscheck, parity, run_case

__all__ = ["CASES", "END_MARKER", "START_MARKER", "Case", "Metric", "crosscheck", "markdown_report", "parity",
           "replace_section", "run_case", "summarise"]
