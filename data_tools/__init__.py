"""Command-line tools for FER datasets: `python -m data_tools.<tool> --help`.

audit (read-only report: splits, balance, blanks, exact duplicates, samples) and the tools that
write a new tree from an old one (dedup, stratify, merge, mislabel review); see docs/data.md
and docs/data_tools.md.
"""
