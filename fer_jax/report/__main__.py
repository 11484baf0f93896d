"""The study report of every run under RUNS_DIR:

python -m fer_jax.report RUNS_DIR [--out=DIR] [--max_gap=10]
"""

import sys

from absl import app, flags

from fer_jax.report.render import table, to_markdown
from fer_jax.report.study import (
  COMPARISON_HEADER,
  WINNER_MAX_GAP,
  closing_lines,
  comparison_rows,
  write_study_report,
)

_OUT = flags.DEFINE_string("out", None, "where to write the report (default: the runs directory)")
_MAX_GAP = flags.DEFINE_float(
  "max_gap", WINNER_MAX_GAP, "winner: best val accuracy among mean gap < this"
)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m fer_jax.report RUNS_DIR [--out=DIR]")
  root = argv[1]
  out = _OUT.value or root
  try:
    summary = write_study_report(root, out, _MAX_GAP.value)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  rows = comparison_rows(summary["groups"], summary["decision"]["winner"])
  print(to_markdown([table(COMPARISON_HEADER, rows)]))
  print("\n".join(closing_lines(summary, out)))


if __name__ == "__main__":
  app.run(main)
