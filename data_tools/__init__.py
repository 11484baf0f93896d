"""Command-line tools for FER datasets: `python -m data_tools.<tool> --help`.

audit (read-only report: splits, balance, blanks, exact duplicates, samples) and the tools that
write a new tree from an old one (dedup, stratify, merge, mislabel review); see docs/data.md
and docs/data_tools.md. Their shared parts: common (flags, reading a tree, review CSVs),
writing (the plan and carrying it out), hashing and verify (dedup's two steps, also used by
audit, stratify and merge), audit_checks, affectnet (merge's reader) and judge (mislabel's
out-of-fold training and confident learning).
"""
