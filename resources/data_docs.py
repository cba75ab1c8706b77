"""Data Docs that read offline: one HTML page per validation and an index, styles inline.

Great Expectations' own Data Docs fetch their CSS and scripts from the internet, so without it the
pages are unstyled and the index is empty. These pages are rendered from the same validation
results and need nothing but the files: `make dev` serves the folder over http (FT_DOCS_URL), and
the Dagster metadata links to the pages there. A page's verdict is the quality gate's when the
caller gives it (a drop passes with a few rejected rows when they stay within the limit), else
the suite's.
"""

import html
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

INDEX = "index.html"
# Beside a rule that only warns (validation.answer_quality mode warn): its rows are counted, not left out.
WARNING_MARK = " <em>(warning: rows kept)</em>"
STYLE = """
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       color: #1f2933; padding: 0 1rem; }
h1 { font-size: 1.4rem; margin-bottom: .25rem; } .sub { color: #52606d; margin-top: 0; }
.verdict { display: inline-block; padding: .35rem .8rem; border-radius: 4px; font-weight: 600; margin: .5rem 0 1rem; }
.passed { background: #e3f9e5; color: #05400a; border: 1px solid #57ae5b; }
.failed { background: #ffe3e3; color: #610404; border: 1px solid #e66a6a; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid #d9e2ec; vertical-align: top; }
th { background: #f0f4f8; font-weight: 600; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f0f4f8; padding: 0 .25rem; border-radius: 3px; } a { color: #2160a8; }
"""


@dataclass(frozen=True)
class PageSummary:
    """What the index shows of a page, kept beside it as JSON."""

    page: str
    title: str
    passed: bool
    verdict: str
    written: str


def document(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def outcome_rows(outcomes) -> str:
    rows = []
    for o in outcomes:
        rows.append(
            f"<tr><td>{html.escape(o.rule)}{WARNING_MARK if getattr(o, 'warn', False) else ''}</td>"
            f"<td><code>{html.escape(o.column or '')}</code></td>"
            f"<td><code>{html.escape(o.expectation)}</code></td><td class='n'>{o.unexpected_count}</td>"
            f"<td class='n'>{o.element_count}</td></tr>"
        )
    return "".join(rows)


def language_section(languages: dict[str, int] | None) -> str:
    """The rows per detected language ('und': too little text to tell), most first."""
    total = sum((languages or {}).values())
    if not total:
        return ""
    rows = "".join(
        f"<tr><td><code>{html.escape(code)}</code></td><td class='n'>{n}</td><td class='n'>{n / total:.1%}</td></tr>"
        for code, n in sorted(languages.items(), key=lambda item: (-item[1], item[0]))
    )
    return (
        "<h2>Language mix</h2><table><tr><th>language</th><th>rows</th><th>share</th></tr>"
        f"{rows}</table><p class='sub'>Every row of the drop, rejected ones too; <code>und</code>: "
        "too little text, or too little confidence, to tell.</p>"
    )


def validation_page(
    summary: PageSummary, suite: str, outcomes, result_path: str | None, languages: dict[str, int] | None = None
) -> str:
    """One validation: its verdict, each expectation with the rows that broke it, and the language mix."""
    verdict = "passed" if summary.passed else "failed"
    body = (
        f"<p><a href='{INDEX}'>All validations</a></p><h1>{html.escape(summary.title)}</h1>"
        f"<p class='sub'>Suite <code>{html.escape(suite)}</code>, validated {html.escape(summary.written)}</p>"
        f"<div class='verdict {verdict}'>{html.escape(summary.verdict)}</div>"
        "<table><tr><th>rule</th><th>column</th><th>expectation</th><th>rows that broke it</th><th>of rows</th></tr>"
        f"{outcome_rows(outcomes)}</table>"
        "<p class='sub'>Rows that break a rule are kept out of training, in <code>rejected_records</code> with their "
        "reasons; rows that break a rule marked as a warning are counted and kept. The verdict is the quality "
        "gate's: a drop passes while its share of bad rows stays within "
        "<code>max_rejected_fraction</code>.</p>"
        f"{language_section(languages)}"
    )
    if result_path:
        body += f"<p class='sub'>Great Expectations result: <code>{html.escape(result_path)}</code></p>"
    return document(summary.title, body)


def index_page(summaries: list[PageSummary]) -> str:
    rows = "".join(
        f"<tr><td><a href='{html.escape(s.page)}'>{html.escape(s.title)}</a></td>"
        f"<td><span class='verdict {'passed' if s.passed else 'failed'}'>{html.escape(s.verdict)}</span></td>"
        f"<td>{html.escape(s.written)}</td></tr>"
        for s in summaries
    )
    body = (
        "<h1>Data Docs: record validations</h1><p class='sub'>Newest first. Each drop is validated by the "
        "record suite (all rows) and re-validated on the rows that passed.</p>"
        f"<table><tr><th>validation</th><th>verdict</th><th>when</th></tr>{rows}</table>"
    )
    return document("Data Docs", body)


def write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_text(text)
    scratch.replace(path)


def write_page(
    folder: Path, name: str, title: str, verdict: tuple[bool, str], report, languages: dict[str, int] | None = None
) -> None:
    """Write (or rewrite) page `name`.html for `report` (a ValidationReport), with the rows per
    language when given, then the index."""
    folder.mkdir(parents=True, exist_ok=True)
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    summary = PageSummary(page=f"{name}.html", title=title, passed=verdict[0], verdict=verdict[1], written=written)
    write_atomically(
        folder / summary.page, validation_page(summary, report.suite, report.outcomes, report.result_path, languages)
    )
    write_atomically(folder / f"{name}.json", json.dumps(asdict(summary)))
    summaries = [PageSummary(**json.loads(p.read_text())) for p in folder.glob("*.json")]
    write_atomically(folder / INDEX, index_page(sorted(summaries, key=lambda s: s.written, reverse=True)))
