"""How an answer is scored against the expected one, and how scores are shown.

Pure functions, shared by `model_evaluation` (which computes the scores), the promotion gate and
the model card (which show them). Text metrics come from the libraries that define them
(rouge-score, sacrebleu); JSON answers are compared by value.
"""

import json
import re

from assets.domain.chat import normalize
from assets.domain.tool_calls import parse_reply

# The metric the gate compares when `evaluation.primary_metric` is 'auto', by task type.
DEFAULT_PRIMARY = {"json": "exact_match", "open_ended": "rougeL", "tool_call": "exact_match"}


def parse_json(value: str):
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return None


def task_type(expected: list[str], tool_calls: bool = False) -> str:
    """'tool_call' when expected replies call tools, 'json' when every expected answer parses as
    JSON, else 'open_ended'."""
    if tool_calls:
        return "tool_call"
    return "json" if expected and all(parse_json(e) is not None for e in expected) else "open_ended"


def call_signatures(text: str) -> tuple[str, list[tuple[str, object]]]:
    """A reply's text and its tool calls as (name, parsed arguments), in order, for comparison."""
    content, calls = parse_reply(text)
    return content, [(c["function"]["name"], parse_json(c["function"]["arguments"])) for c in calls]


def tool_call_scores(prediction: str, expected: str) -> dict[str, float]:
    """Exact match of the calls (names and arguments compared by value, in order; a reply that
    should call no tool must match as text), and the share of expected calls whose tool was named
    in the same place."""
    got_text, got = call_signatures(prediction)
    want_text, want = call_signatures(expected)
    if not want:
        exact = not got and normalize(got_text) == normalize(want_text)
        return {"exact_match": float(exact), "tool_name_accuracy": float(not got)}
    named = sum(g[0] == w[0] for g, w in zip(got, want)) / len(want)
    return {"exact_match": float(got == want), "tool_name_accuracy": named}


_rouge = None


def text_scores(prediction: str, expected: str) -> dict[str, float]:
    """ROUGE-L and token F1 (ROUGE-1 F-measure: unigram overlap) from rouge-score, chrF from sacrebleu."""
    global _rouge
    import sacrebleu
    from rouge_score import rouge_scorer

    _rouge = _rouge or rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    rouge = _rouge.score(expected, prediction)
    return {
        "rougeL": rouge["rougeL"].fmeasure,
        "token_f1": rouge["rouge1"].fmeasure,
        "chrf": sacrebleu.sentence_chrf(prediction, [expected]).score / 100,
    }


def extract_answer(text: str, pattern: str) -> str | None:
    """The final answer `pattern` marks in `text`: its last match's first group (or the whole
    match when it has no group), or None when it does not match."""
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None
    last = matches[-1]
    return (last.group(1) if last.re.groups else last.group(0)).strip()


def score_answer(
    prediction: str, expected: str, task: str = "open_ended", answer_pattern: str = ""
) -> dict[str, float]:
    """Per-example scores. For JSON tasks the comparison is on parsed values, so key order and
    spacing do not matter, and `json_valid` and `field_accuracy` (for objects) are added. With an
    `answer_pattern`, exact match compares the extracted answers (a reference the pattern does not
    match is compared whole; a generation it does not match is wrong)."""
    scores = text_scores(prediction, expected)
    if task == "tool_call":
        return scores | tool_call_scores(prediction, expected)
    if answer_pattern:
        reference = extract_answer(expected, answer_pattern) or expected
        answer = extract_answer(prediction, answer_pattern)
        scores["exact_match"] = float(answer is not None and normalize(answer) == normalize(reference))
        return scores
    if task != "json":
        scores["exact_match"] = float(normalize(prediction) == normalize(expected))
        return scores
    target, got = parse_json(expected), parse_json(prediction.strip())
    scores.update({"exact_match": float(got == target), "json_valid": float(got is not None)})
    if isinstance(target, dict) and target:
        got_fields = got if isinstance(got, dict) else {}
        scores["field_accuracy"] = sum(got_fields.get(k) == v for k, v in target.items()) / len(target)
    return scores


def mean_scores(per_example: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in per_example for k in s})
    return {k: sum(s.get(k, 0.0) for s in per_example) / len(per_example) for k in keys}


# Decimals a shown metric value is rounded to (the values themselves are kept in full).
SHOWN_DECIMALS = 4


def comparison_rows(base: dict, tuned: dict, primary: str, champion: dict | None = None) -> list[dict]:
    """One row per metric: base, tuned, the change and, when a champion is given, its value (None
    where it lacks the metric), rounded for showing; the primary metric marked and first. The one
    source of the comparison: MLflow's table and chart and the markdown `metrics_table` show these."""
    rows = []
    for key in sorted(tuned, key=lambda k: (k != primary, k)):
        before = base.get(key, float("nan"))
        row = {"metric": key, "primary": key == primary, "base": before, "tuned": tuned[key]}
        row["change"] = tuned[key] - before
        if champion is not None:
            row["champion"] = champion.get(key)
        rows.append({k: round(v, SHOWN_DECIMALS) if isinstance(v, float) else v for k, v in row.items()})
    return rows


def _shown(value, signed: bool = False) -> str:
    """A table cell: the rounded value at SHOWN_DECIMALS places; a missing value (None, NaN) as '-'."""
    if value is None or value != value:
        return "-"
    return f"{value:+.{SHOWN_DECIMALS}f}" if signed else f"{value:.{SHOWN_DECIMALS}f}"


def metrics_table(base: dict, tuned: dict, primary: str, champion: dict | None = None) -> str:
    """Markdown of `comparison_rows`: the same rows in the same order, the same rounding, and the
    champion column exactly when they carry one (a champion was given)."""
    rows = comparison_rows(base, tuned, primary, champion)
    with_champion = champion is not None
    lines = ["| metric | base | tuned | change |" + (" champion |" if with_champion else "")]
    lines.append("|---|---|---|---|" + ("---|" if with_champion else ""))
    for row in rows:
        mark = " (primary)" if row["primary"] else ""
        cells = [row["metric"] + mark, _shown(row["base"]), _shown(row["tuned"]), _shown(row["change"], signed=True)]
        if with_champion:
            cells.append(_shown(row["champion"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- per-slice results --------------------------------------------------------------------------

# The fields eval items are broken down by (`Evaluation.slices`), in the order they are shown.
SLICE_FIELDS = ("drop", "source_file", "category")
# How an item without a value of a slice field (a row without a category) is shown.
NO_VALUE = "(none)"
# Metrics `Evaluation.items` keeps per held-out preference pair, per probe text, and per question of a
# regression suite (`suite.<name>.<metric>`): not per eval prompt.
PAIR_METRICS = ("preference_accuracy", "preference_margin")
PROBE_METRICS = ("probe_perplexity",)
SUITE_PREFIX = "suite."


def slice_values(rows) -> dict[str, tuple]:
    """Each slice field's value per row, from rows holding them as columns (a data frame of eval rows,
    or a dict of lists); a field they lack (rows written before it existed) is left out."""
    return {name: tuple(_label(v) for v in rows[name]) for name in SLICE_FIELDS if name in rows}


def _label(value) -> str | None:
    """A slice field's value as text; None for none (a null, NaN where a data frame had one, blank)."""
    return None if value is None or value != value or not str(value).strip() else str(value)


def slice_groups(slices: dict[str, tuple]) -> dict[str, dict[str, list[int]]]:
    """Per slice field worth a breakdown, each of its values (sorted) with the positions of the items
    holding it. Worth one: more than one value, and not the very grouping of a field before it
    (source_file when each drop is one file: its rows would repeat the drop's)."""
    groups: dict[str, dict[str, list[int]]] = {}
    for name in (f for f in SLICE_FIELDS if f in slices):
        by_value: dict[str, list[int]] = {}
        for position, value in enumerate(slices[name]):
            by_value.setdefault(_label(value) or NO_VALUE, []).append(position)
        grouping = sorted(by_value.values())
        if len(by_value) > 1 and all(grouping != sorted(g.values()) for g in groups.values()):
            groups[name] = dict(sorted(by_value.items()))
    return groups


def _mean_over(values: tuple | None, positions: list[int], items: int) -> float | None:
    """The mean of `values` at `positions`; None when a model has no such scores, or not one per item."""
    if values is None or len(values) != items:
        return None
    return sum(values[i] for i in positions) / len(positions)


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _slice_metric_rows(items: dict, slices: dict[str, tuple], metrics: list[str], primary: str) -> list[dict]:
    """`slice_rows` for one kind of item (eval prompts, or held-out pairs) and its metrics (those the
    tuned model has one score per labelled item of)."""
    count = len(next(iter(slices.values()), ()))
    rows = []
    for name, values in slice_groups(slices).items():
        for metric in (m for m in metrics if len(items.get("tuned", {}).get(m, ())) == count):
            for value, positions in values.items():
                means = {m: _mean_over(items.get(m, {}).get(metric), positions, count) for m in items}
                row = {"slice": name, "value": value, "items": len(positions), "metric": metric}
                rows.append(row | {"primary": metric == primary} | changes(means))
    return rows


def changes(means: dict[str, float | None]) -> dict[str, float | None]:
    """A slice's means per model (base, tuned, champion) and the tuned model's change over the other two."""
    base, tuned, champion = (means.get(m) for m in ("base", "tuned", "champion"))
    return {
        "base": base,
        "tuned": tuned,
        "change": _difference(tuned, base),
        "champion": champion,
        "change_vs_champion": _difference(tuned, champion),
    }


def slice_rows(
    items: dict[str, dict[str, tuple]], slices: dict[str, tuple], primary: str, pair_slices: dict | None = None
) -> list[dict]:
    """Every per-item metric per slice (`slice_groups`: drop, source file, category): one row per slice
    field, metric and value with the number of items, each model's mean over them (`items`: model ->
    metric -> scores per item, the 'champion' too when it has them; None where a model lacks them),
    and the tuned model's change over the base and over the champion, rounded for showing. The task
    metrics are sliced by `slices` (each eval prompt's labels), the preference metrics by `pair_slices`
    (each held-out pair's); the primary metric first. The one source of the slices: the metadata's
    and the card's tables and MLflow's `eval/slices.csv` and chart show these."""
    tuned = items.get("tuned", {})
    per_prompt = (m for m in tuned if m not in PAIR_METRICS + PROBE_METRICS and not m.startswith(SUITE_PREFIX))
    order = sorted(per_prompt, key=lambda m: (m != primary, m))
    pairs = [m for m in PAIR_METRICS if m in tuned]
    rows = _slice_metric_rows(items, slices, order, primary)
    rows += _slice_metric_rows(items, pair_slices or {}, pairs, primary)
    return [{k: round(v, SHOWN_DECIMALS) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def slices_table(rows: list[dict]) -> str:
    """Markdown of `slice_rows` (or some of them), in their order; the champion's columns when a row
    has the champion's scores. A sentence instead when there is no breakdown."""
    if not rows:
        return f"No breakdown: no slice field ({', '.join(SLICE_FIELDS)}) has more than one value among the eval items."
    champion = any(row["champion"] is not None for row in rows)
    lines = ["| slice | value | items | metric | base | tuned | change |" + (" champion | vs champion |" * champion)]
    lines.append("|---|---|---|---|---|---|---|" + ("---|---|" * champion))
    for row in rows:
        cells = [row["slice"], row["value"], str(row["items"]), row["metric"] + (" (primary)" * row["primary"])]
        cells += [_shown(row["base"]), _shown(row["tuned"]), _shown(row["change"], signed=True)]
        if champion:
            cells += [_shown(row["champion"]), _shown(row["change_vs_champion"], signed=True)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
