"""Formatting helpers and report documents rendered to markdown and HTML.

A report is built as a list of blocks (heading, paragraph, bullets, table, image) and rendered
to markdown and, for studies, to HTML with the PNGs embedded; no markdown library is a
dependency, and the two renderers are a few lines each.
"""

import base64
import html
import os

from fer_jax.evals import metrics

# --------------------------------------------------------------------------- formatting


def run_title(name, variant):
  """'b_pp' or 'b_pp:quick': how runs are named on the console and in reports."""
  return f"{name}:{variant}" if variant else name


def markdown_table(header, rows):
  """Lines of a Markdown table; cells are formatted with str()."""
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
    "| " + " | ".join(str(c) for c in row) + " |" for row in rows
  ]


def pct(fraction, digits=2):
  return "—" if fraction is None else f"{100 * fraction:.{digits}f} %"


def num(value, fmt=",.0f"):
  return "—" if value is None else format(value, fmt)


def seconds(s):
  if s is None:
    return "—"
  return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def gap_text(gap, eval_gap=None):
  return f"{gap:+.1f} points ({metrics.gap_diagnosis(gap, eval_gap)})"


# --------------------------------------------------------------------------- documents


def heading(text, level=2):
  return ("heading", level, text)


def para(text):
  return ("para", text)


def bullets(items):
  return ("bullets", list(items))


def table(header, rows):
  return ("table", list(header), [list(map(str, r)) for r in rows])


def image(file, alt):
  return ("image", file, alt)


def to_markdown(blocks):
  out = []
  for block in blocks:
    kind = block[0]
    if kind == "heading":
      out.append("#" * block[1] + " " + block[2])
    elif kind == "para":
      out.append(block[1])
    elif kind == "bullets":
      out.append("\n".join(f"- {item}" for item in block[1]))
    elif kind == "table":
      out.append("\n".join(markdown_table(block[1], block[2])))
    elif kind == "image":
      out.append(f"![{block[2]}]({block[1]})")
  return "\n\n".join(out) + "\n"


def to_html(blocks, image_dir, title):
  """One HTML file with every image embedded as base64, readable offline and mailable."""
  out = []
  esc = html.escape
  for block in blocks:
    kind = block[0]
    if kind == "heading":
      out.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
    elif kind == "para":
      out.append(f"<p>{esc(block[1])}</p>")
    elif kind == "bullets":
      out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block[1]) + "</ul>")
    elif kind == "table":
      _, header, rows = block
      head = "".join(f"<th>{esc(h)}</th>" for h in header)
      body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
      out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    elif kind == "image":
      with open(os.path.join(image_dir, block[1]), "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
      out.append(f'<img alt="{esc(block[2])}" src="data:image/png;base64,{data}">')
  style = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
    "padding:3px 8px;text-align:right}th{background:#f0f0f0}img{max-width:100%}"
  )
  return (
    f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
    f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
  )
