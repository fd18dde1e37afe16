"""Command-line scripts and the benchmark harness (tools/bench); not part of the installed library."""
