"""Reports of runs and studies: markdown for people, PNG plots, and a self-contained HTML page.

  python -m fer_jax.report runs/study [--out=DIR]    # aggregate every run under runs/study

render.py      formatting helpers and the block documents (heading, paragraph, bullets, table,
               image) rendered to markdown and to HTML with the PNGs embedded
run_report.py  one run's report.md and plots, written by the training loop when a run finishes
study.py       many runs: seed statistics per config, the study's winner rule with McNemar tests,
               and the study's report.md / report.html / summary.json
__main__.py    the command line above
"""
