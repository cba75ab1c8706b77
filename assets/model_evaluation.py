"""model_evaluation: base, candidate (challenger) and champion scored on the same eval prompts and pairs."""

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from assets.domain.chat import prompt_text, training_chat_template, training_tokens
from assets.domain.evaluation import (
    ITEMS_ARTIFACT,
    JUDGE_METRIC,
    SAMPLES_ARTIFACT,
    EvaluationConfig,
    JudgeConfig,
    SuiteConfig,
    generation_budget,
)
from assets.domain.lineage import ADAPTER_ON_TAG, BASE_MODEL_PATH_TAG
from assets.domain.metrics import (
    DEFAULT_PRIMARY,
    SHOWN_DECIMALS,
    mean_scores,
    metrics_table,
    score_answer,
    slice_rows,
    slice_values,
    slices_table,
    task_type,
)
from assets.domain.preferences import chosen_conversations, margin_summary, reply_tokens
from assets.domain.significance import detectable_gain, paired_interval
from assets.domain.tool_calls import reply_text
from assets.domain.values import ChampionScores, Evaluation, TrainedModel
from data_checks.pii import scan
from data_checks.promotion_gate import GateConfig
from resources.batch_order import length_sorted_batches
from resources.benchmark_suites import METRICS, Suite, score_suite, suite_kind
from resources.generation import greedy_answers
from resources.judge import Comparison, EndpointJudge, LocalJudge, pairwise_scores
from resources.mlflow_registry import CHAMPION, MlflowRegistry
from resources.models import ModelLoader
from resources.records import RecordSet


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int):
    """Greedy answers to rendered prompts (`chat.prompt_text`), batched by length
    (`resources.generation.greedy_answers`). Returns the answers, whether each stopped on its own
    before max_new_tokens, and new tokens/s."""
    started = time.time()
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    new_tokens = sum(len(a.tokens) for a in answers)
    texts = tokenizer.batch_decode([a.tokens for a in answers], skip_special_tokens=True)
    return [t.strip() for t in texts], [a.stopped for a in answers], new_tokens / max(time.time() - started, 1e-9)


def eval_loss(model, tokenizer, examples: list[dict], batch_size: int, max_batch_tokens: int = 0) -> float:
    """Mean cross-entropy on the tokens training puts loss on (`chat.training_tokens`: the
    assistant's, weight-0 turns excluded), over the eval examples, in right-padded batches of similar
    length, at most `batch_size` rows and `max_batch_tokens` padded tokens each (`length_sorted_batches`)."""
    import torch

    total, count = 0.0, 0
    lengths = [len(e["input_ids"]) for e in examples]
    for indices in length_sorted_batches(lengths, batch_size, max_batch_tokens):
        batch = [examples[i] for i in indices]
        width = max(len(e["input_ids"]) for e in batch)
        pad = [width - len(e["input_ids"]) for e in batch]
        ids = torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * n for e, n in zip(batch, pad)])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * n for e, n in zip(batch, pad)])
        labels = torch.tensor([e["assistant_masks"] + [0] * n for e, n in zip(batch, pad)])
        labels = ids.masked_fill(labels == 0, -100)
        with torch.no_grad():
            out = model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device), labels=labels.to(model.device)
            )
        n = int((labels[:, 1:] != -100).sum())
        total, count = total + float(out.loss) * n, count + n
    return total / count


def probe_texts(probe: str) -> list[str]:
    """The probe's texts: its paragraphs (separated by blank lines), each measured on its own so that
    the forgetting has an interval over texts."""
    return [text.strip() for text in probe.split("\n\n") if text.strip()]


def probe_loss(model, tokenizer, text: str, window: int = 512) -> tuple[float, int]:
    """Summed cross-entropy of plain text (no chat template) and how many tokens it was taken on, in
    windows of `window` tokens."""
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window].unsqueeze(0).to(model.device)
        if chunk.shape[1] < 2:
            break
        with torch.no_grad():
            loss = float(model(input_ids=chunk, labels=chunk).loss)
        total, count = total + loss * (chunk.shape[1] - 1), count + chunk.shape[1] - 1
    return total, count


def probe_perplexity(model, tokenizer, texts: list[str]) -> tuple[float, list[float]]:
    """Perplexity on the probe's texts together (over all their tokens), and on each text."""
    losses = [probe_loss(model, tokenizer, text) for text in texts]
    overall = math.exp(sum(loss for loss, _ in losses) / sum(count for _, count in losses))
    return overall, [math.exp(loss / count) for loss, count in losses]


def reply_logprobs(
    model, pad_id: int, replies: list[tuple[list[int], list[int]]], batch_size: int, max_batch_tokens: int = 0
) -> list[float]:
    """Each reply's summed log-probability after its prompt, from (prompt ids, reply ids): the
    sequence log-probability DPO compares. Right-padded batches of similar length, at most
    `batch_size` rows and `max_batch_tokens` padded tokens each (`length_sorted_batches`)."""
    import torch

    sums = [0.0] * len(replies)
    for indices in length_sorted_batches([len(p) + len(r) for p, r in replies], batch_size, max_batch_tokens):
        batch = [replies[i][0] + replies[i][1] for i in indices]
        width = max(len(ids) for ids in batch)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch], device=model.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        token_logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        for row, i in enumerate(indices):
            prompt, reply = replies[i]
            sums[i] = float(token_logps[row, len(prompt) - 1 : len(prompt) - 1 + len(reply)].sum())
    return sums


def pair_logprobs(model, pad_id: int, pairs: list[tuple], batch_size: int, max_batch_tokens: int = 0):
    """On (prompt, chosen, rejected) token ids: each pair's chosen and rejected reply log-probabilities
    (two lists, in the pairs' order), which `margin_summary` turns into `preference_accuracy` and
    `preference_margin`."""
    chosen = reply_logprobs(model, pad_id, [(p, c) for p, c, _ in pairs], batch_size, max_batch_tokens)
    rejected = reply_logprobs(model, pad_id, [(p, r) for p, _, r in pairs], batch_size, max_batch_tokens)
    return chosen, rejected


@dataclass
class Scorer:
    """Scores any model on one eval set with one decoding: task metrics, end-of-turn rate, eval loss
    and perplexity, probe perplexity. Remembers each named model's generation speed."""

    tokenizer: Any
    examples: "EvalSet"
    config: EvaluationConfig
    probe: list[str]
    """The probe's texts (`probe_texts`)."""
    suites: list[Suite] = field(default_factory=list)
    """The regression suites (`regression_suites`), scored through lm-evaluation-harness."""
    chat_template: str | None = None
    """The template the suites' questions are rendered with: the one training renders with."""
    speeds: dict[str, float] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)
    """Per named model, how many generations ran out of budget instead of ending their turn."""

    def __call__(self, model, name: str = "model") -> tuple[dict[str, float], list[str], dict[str, tuple]]:
        """The model's metrics, its answers, and each metric per item (`Evaluation.items`)."""
        tokenizer, config, ex = self.tokenizer, self.config, self.examples
        answers, stopped, self.speeds[name] = generate(
            model, tokenizer, ex.prompts, ex.max_new_tokens, config.generation_batch_size
        )
        self.cut[name] = len(stopped) - sum(stopped)
        pattern = config.answer_pattern
        per_prompt = [score_answer(a, e, ex.task, pattern) for a, e in zip(answers, ex.expected)]
        metrics = mean_scores(per_prompt)
        items = {key: tuple(scores.get(key, 0.0) for scores in per_prompt) for key in metrics}
        metrics["end_of_turn_rate"] = sum(stopped) / len(stopped)
        metrics["eval_loss"] = eval_loss(model, tokenizer, ex.tokens, config.batch_size, config.max_batch_tokens)
        metrics["perplexity"] = math.exp(metrics["eval_loss"])
        metrics["probe_perplexity"], per_text = probe_perplexity(model, tokenizer, self.probe)
        items["probe_perplexity"] = tuple(per_text)
        if ex.preferences:
            pad = tokenizer.pad_token_id
            chosen, rejected = pair_logprobs(model, pad, ex.preferences, config.batch_size, config.max_batch_tokens)
            metrics |= margin_summary(chosen, rejected)
            items["preference_accuracy"] = tuple(float(c > r) for c, r in zip(chosen, rejected))
            items["preference_margin"] = tuple(c - r for c, r in zip(chosen, rejected))
        for suite in self.suites:
            scores = score_suite(model, tokenizer, suite, self.chat_template, config.batch_size)
            metrics[suite_key(suite)] = sum(scores) / len(scores)
            items[suite_key(suite)] = tuple(scores)
        return metrics, answers, items


def suite_key(suite: Suite) -> str:
    """The suite's metric among a model's metrics and items: 'suite.<name>.<metric>'."""
    return f"suite.{suite.name}.{suite.metric}"


def regression_suites(configs: list[SuiteConfig]) -> list[Suite]:
    """The configured suites, each with its kind (from its file's columns) and its metric (auto:
    acc for multiple choice, exact_match for prompt and reference); an error naming the suite when
    its file is missing or its metric does not fit its kind."""
    suites = []
    for config in configs:
        if not Path(config.path).is_file():
            raise FileNotFoundError(f"evaluation.suites {config.name!r}: no such file {config.path}")
        kind = suite_kind(config.path)
        metric = METRICS[kind][0] if config.metric == "auto" else config.metric
        if metric not in METRICS[kind]:
            raise ValueError(
                f"evaluation.suites {config.name!r} ({config.path}): metric {metric!r} does not score a {kind} "
                f"suite; use one of {', '.join(METRICS[kind])}"
            )
        suites.append(Suite(config.name, config.path, kind, metric, config.max_new_tokens, config.max_regression))
    return suites


@dataclass(frozen=True)
class EvalSet:
    """The eval examples every model is scored on, the same ones every time, rendered once: the
    prompts generation starts from, the expected replies, and the tokens eval loss is taken on."""

    conversations: list[list[dict]]
    prompts: list[str]
    expected: list[str]
    """The reply each prompt should get, as the model should write it (`tool_calls.reply_text`)."""
    tokens: list[dict]
    task: str
    primary: str
    eval_hash: str
    max_new_tokens: int
    """The generation budget: the configured one, or derived from the references (auto)."""
    preferences: list[tuple[list[int], list[int], list[int]]] = field(default_factory=list)
    """The eval split's preference pairs as (prompt, chosen, rejected) token ids (`reply_tokens`)."""
    slices: dict[str, tuple] = field(default_factory=dict)
    """Each conversation's drop, source file and category (`slice_values`), in their order."""
    pair_slices: dict[str, tuple] = field(default_factory=dict)
    """The same for each preference pair."""

    @classmethod
    def of(cls, pairs: RecordSet, config: EvaluationConfig, tokenizer, template: str) -> "EvalSet":
        """The eval split's conversations (with only preference pairs there: each prompt with its
        chosen reply) and its preference pairs, the same ones every time (max_eval_examples of each)."""
        evals = eval_rows(pairs, "sft", config.max_eval_examples)
        preferences = eval_rows(pairs, "preference", config.max_eval_examples)
        if evals.empty:
            evals = chosen_conversations(preferences)
        conversations = list(evals["messages"])
        tools = list(evals["tools"]) if "tools" in evals else [None] * len(conversations)
        expected = [reply_text(c[-1]) for c in conversations]
        task = task_type(expected, tool_calls=any(c[-1].get("tool_calls") for c in conversations))
        return cls(
            conversations=conversations,
            prompts=[prompt_text(tokenizer, c, t) for c, t in zip(conversations, tools)],
            expected=expected,
            tokens=[training_tokens(tokenizer, c, t, template) for c, t in zip(conversations, tools)],
            task=task,
            primary=DEFAULT_PRIMARY[task] if config.primary_metric == "auto" else config.primary_metric,
            # The split's one content hash (instruction_pairs); max_eval_examples is in the settings hash.
            eval_hash=pairs.summary.eval_set_hash,
            max_new_tokens=config.max_new_tokens or generation_budget(tokenizer, expected, config.max_new_tokens_cap),
            preferences=[
                (*reply_tokens(tokenizer, m, c), reply_tokens(tokenizer, m, r)[1])
                for m, c, r in zip(preferences["messages"], preferences["chosen"], preferences["rejected"])
            ],
            slices=slice_values(evals),
            pair_slices=slice_values(preferences),
        )


def eval_rows(pairs: RecordSet, kind: str, limit: int) -> pd.DataFrame:
    """The eval split's rows of one kind in a fixed order, at most `limit` (0: all)."""
    rows = pairs.frame(where=[("split", "=", "eval"), ("kind", "=", kind)]).sort_values("example_id")
    return rows.head(limit) if limit else rows


def candidate_model(models: ModelLoader, base, candidate: TrainedModel, base_model: str):
    """The candidate, ready to score: its adapter on the already loaded base when the adapter
    applies to the base model (lora & co. after 'sft' or 'dpo'), else its merged folder (an adapter
    on the merged SFT model after 'sft+dpo', or all weights trained)."""
    if candidate.adapter_applies_to(base_model):
        return models.with_adapter(base, candidate.adapter_dir).eval()
    return models.load_model(candidate.merged_dir).eval()


def champion_scores(
    registry: MlflowRegistry, models: ModelLoader, score: Scorer, settings_hash: str, base_model: str, host
) -> tuple[ChampionScores | None, list[str] | None]:
    """The current champion's metrics on this very eval set and settings, per item too (and its answers
    when re-scored): taken from its run when it was evaluated the same way and kept its per-item scores
    (`ITEMS_ARTIFACT`), else re-scored here: its
    adapter on the loaded base model `host` (beside the candidate's adapter when `host` carries one)
    when that adapter applies to this base, else its logged (merged) model."""
    version = registry.version_by_alias(CHAMPION)
    if version is None:
        return None, None
    tags, number = version.tags or {}, str(version.version)
    same = (
        tags.get("data.eval_set_hash") == score.examples.eval_hash and tags.get("eval.settings_hash") == settings_hash
    )
    items = registry.run_dict(version.run_id, ITEMS_ARTIFACT) if same else None
    if items:  # scored the same way when it was the candidate: its scores, per item too, from its run
        metrics = registry.run_metrics(version.run_id)
        tuned = {k.removeprefix("tuned."): v for k, v in metrics.items() if k.startswith("tuned.")}
        items = {metric: tuple(values) for metric, values in items.items()}
        answers = logged_answers(registry, version.run_id, len(score.examples.prompts))
        return ChampionScores(version=number, rescored=False, metrics=tuned, items=items), answers
    # Versions registered before the tag existed had their adapter on the base model.
    if (
        tags.get(BASE_MODEL_PATH_TAG, tags.get("base_model")) == base_model
        and tags.get(ADAPTER_ON_TAG, "base_model") == "base_model"
    ):
        adapter = registry.download(version.run_id, "adapter")
        if hasattr(host, "peft_config"):
            models.add_adapter(host, adapter, name=CHAMPION)
            host.set_adapter(CHAMPION)
            metrics, answers, items = score(host)
            host.set_adapter("default")
        else:
            metrics, answers, items = score(models.with_adapter(host, adapter).eval())
    else:
        metrics, answers, items = score(models.load_model(registry.download_model_weights(number)).eval())
    return ChampionScores(version=number, rescored=True, metrics=metrics, items=items), answers


def logged_answers(registry: MlflowRegistry, run_id: str, count: int) -> list[str] | None:
    """A registered version's answers to the eval prompts, as its run logged them when it was the
    candidate (the `tuned` column of eval/samples.json, personal data already masked); None when
    that run has none for this many prompts."""
    table = registry.run_dict(run_id, SAMPLES_ARTIFACT) or {}
    columns, rows = table.get("columns", []), table.get("data", [])
    if "tuned" not in columns or len(rows) != count:
        return None
    return [row[columns.index("tuned")] for row in rows]


def judge_scores(config: JudgeConfig, samples: pd.DataFrame, models: ModelLoader, base_model: str) -> dict:
    """The judge's verdicts (`resources/judge.py`): per model the candidate is compared with (the base,
    the champion when its answers are known), the candidate's score on each prompt (1 won, 0.5 tie or
    one win each, 0 lost; both orders asked). On the samples' answers, personal data masked, so a
    judge behind an endpoint never receives what the `personal_data_scan` flags. Empty when off."""
    if config.kind == "off":
        return {}
    if config.kind == "endpoint":
        judge = EndpointJudge(config.base_url, config.model, config.api_key_env)
    else:
        path = config.model or base_model
        judge = LocalJudge(models.load_model(path).eval(), models.load_tokenizer(path))
    rows = samples.head(config.max_prompts) if config.max_prompts else samples
    judged = {}
    for other in ("base", "champion"):
        if other in rows and rows[other].notna().all():
            pairs = zip(rows["prompt"], rows["expected"], rows["tuned"], rows[other])
            judged[other] = tuple(pairwise_scores(judge, [Comparison(*pair) for pair in pairs]))
    return judged


def judged(evaluation: Evaluation, verdicts: dict) -> Evaluation:
    """The evaluation with the judge's verdicts (`judge_scores`) and, among the candidate's metrics, its
    win rate over each model it was compared with (`judge_win_rate_vs_base`, `..._vs_champion`)."""
    rates = {f"{JUDGE_METRIC}_vs_{other}": sum(s) / len(s) for other, s in verdicts.items()}
    return replace(evaluation, judge=verdicts, tuned=evaluation.tuned | rates)


def samples_frame(examples: EvalSet, answers: dict[str, list[str] | None], scores: dict | None = None,
                  metric: str = "") -> pd.DataFrame:  # fmt: skip
    """Prompt, expected answer and each model's answer, one row per eval example, each answer followed by
    its `metric` score when `scores` has the model's (per item): 'right' or 'wrong' for a 0/1 metric,
    else the score; possible personal data (what the `personal_data_scan` flags) replaced by [EMAIL],
    [PHONE], [CARD], since the samples are shown in both UIs."""
    frame = pd.DataFrame({"prompt": [c[-2]["content"] for c in examples.conversations], "expected": examples.expected})
    for name, values in answers.items():
        if values is not None:
            frame[name] = values
            if scores and scores.get(name) is not None:
                frame[f"{name} {metric}"] = [score_mark(v) for v in scores[name]]
    return frame.map(lambda text: scan(text)[0] if isinstance(text, str) else text)


def score_mark(value: float) -> str:
    """An answer's score as a sample row shows it: 'right' (1), 'wrong' (0), else the score."""
    return {1.0: "right", 0.0: "wrong"}.get(value, f"{value:.{SHOWN_DECIMALS}f}")


def evaluation_metadata(ev: Evaluation, samples: pd.DataFrame, sample_rows: int, gate: GateConfig) -> dict:
    primary, champion = ev.primary_metric, ev.champion
    vs_base = paired_interval(ev.items["tuned"][primary], ev.items["base"][primary], gate.confidence, gate.seed)
    return {
        "primary_metric": primary,
        "task_type": ev.task_type,
        f"base_{primary}": round(ev.base_primary, SHOWN_DECIMALS),
        f"tuned_{primary}": round(ev.tuned_primary, SHOWN_DECIMALS),
        f"{primary}_gain_vs_base": f"{vs_base.shown()} ({gate.confidence:.0%} interval, {vs_base.n} prompts)",
        "smallest_detectable_gain": round(detectable_gain(vs_base), SHOWN_DECIMALS),
        "forgetting_pct": round(ev.forgetting_pct, 2),
        "champion": dg.MetadataValue.md(
            pd.DataFrame(
                [{"version": champion.version, "scores": "re-scored here" if champion.rescored else "from its run"}]
            ).to_markdown(index=False)
            if champion
            else "none yet: the first version to pass the gate becomes champion"
        ),
        "eval_examples": ev.eval_examples,
        "eval_set_hash": ev.eval_set_hash,
        "metrics": dg.MetadataValue.md(
            metrics_table(ev.base, ev.tuned, primary, champion.metrics if champion else None)
        ),
        "slices": dg.MetadataValue.md(slices_table(slice_rows(ev.model_items, ev.slices, primary, ev.pair_slices))),
        "samples": dg.MetadataValue.md(samples.head(sample_rows).to_markdown(index=False)),
        "generation_tokens_per_second": dg.MetadataValue.json(
            {k: round(v, 1) for k, v in ev.generation_tokens_per_second.items()}
        ),
        "max_new_tokens": ev.max_new_tokens,
        "generations_cut": dg.MetadataValue.md(
            pd.DataFrame(
                [{"model": m, "answers cut at max_new_tokens": n} for m, n in ev.generations_cut.items()]
            ).to_markdown(index=False)
            if ev.generations_cut
            else "-"
        ),
    }


@dg.asset(
    group_name="model",
    kinds={"pytorch"},
    pool="training",
    automation_condition=dg.AutomationCondition.eager(),
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    evaluation: EvaluationConfig,
    base_model: str,
    preference_tuned_model: TrainedModel,
    instruction_pairs: RecordSet,
    models: ModelLoader,
    mlflow_registry: MlflowRegistry,
    gate: GateConfig,
) -> Evaluation:
    """The base model, the candidate (`preference_tuned_model`, the challenger) and the current
    champion on the same eval prompts with the same greedy decoding. The base is loaded once; an
    adapter that applies to it is switched on there, any other candidate loads from its merged
    folder. Metrics per model: exact match; JSON validity and field accuracy for JSON answers;
    ROUGE-L, token F1 and chrF for text; end-of-turn rate; eval loss and perplexity on the
    assistant's tokens; perplexity on a general-text probe (its rise: the forgetting); preference
    accuracy and margin on the eval split's preference pairs; each regression suite's score
    (`evaluation.suites`, through lm-evaluation-harness); with `evaluation.judge` on, the judge's win
    rate of the candidate over the base and the champion. Each metric kept per item too
    (`Evaluation.items`: the gate's paired intervals) and per drop, source file and category
    (`slices`); the metadata shows the primary metric's gain over the base with its interval, and the
    smallest gain this eval set could show.
    """
    tokenizer = models.load_tokenizer(base_model)
    template = training_chat_template(tokenizer) or tokenizer.chat_template
    examples = EvalSet.of(instruction_pairs, evaluation, tokenizer, template)
    settings_hash = evaluation.settings_hash(examples.max_new_tokens)
    probe = probe_texts(Path(evaluation.probe_path).read_text(encoding="utf-8"))
    suites = regression_suites(evaluation.suites)
    score = Scorer(tokenizer, examples, evaluation, probe, suites, template)

    model = models.load_model(base_model).eval()
    base, base_answers, base_items = score(model, "base")
    tuned_model = candidate_model(models, model, preference_tuned_model, base_model)
    tuned, tuned_answers, tuned_items = score(tuned_model, "tuned")
    require_primary(examples.primary, tuned)
    host = tuned_model if hasattr(tuned_model, "peft_config") else model  # where the champion's adapter goes
    champion, champion_answers = champion_scores(mlflow_registry, models, score, settings_hash, base_model, host)
    answers = {"base": base_answers, "tuned": tuned_answers, "champion": champion_answers}
    primary = examples.primary
    scores = {"base": base_items[primary], "tuned": tuned_items[primary]}
    scores["champion"] = champion.items.get(primary) if champion_answers is not None else None
    samples = samples_frame(examples, answers, scores, primary)
    items = {"base": base_items, "tuned": tuned_items}
    result = evaluation_of(score, settings_hash, base, tuned, champion, samples, preference_tuned_model.method, items)
    result = judged(result, judge_scores(evaluation.judge, samples, models, base_model))
    context.add_output_metadata(evaluation_metadata(result, samples, evaluation.sample_rows, gate))
    return result


def require_primary(primary: str, metrics: dict) -> None:
    """An error naming the computed metrics when the configured primary metric is not among them."""
    if primary not in metrics:
        raise ValueError(
            f"primary_metric {primary!r} is not among the computed metrics ({', '.join(sorted(metrics))}); "
            "set evaluation.primary_metric to one of them, or to auto."
        )


def forgetting_pct(base: tuple[float, ...], tuned: tuple[float, ...]) -> float:
    """The forgetting: the mean rise, in percent, of the probe perplexity over the probe's texts (the
    figure whose interval the gate holds to its budget)."""
    return sum(100 * (t / b - 1) for b, t in zip(base, tuned)) / len(base)


def evaluation_of(
    score: Scorer, settings_hash: str, base: dict, tuned: dict, champion, samples, method: str, items: dict
) -> Evaluation:
    """The stage's value, from the scores of base, tuned and champion on one eval set."""
    examples = score.examples
    return Evaluation(
        primary_metric=examples.primary,
        task_type=examples.task,
        base=base,
        tuned=tuned,
        champion=champion,
        forgetting_pct=forgetting_pct(items["base"]["probe_perplexity"], items["tuned"]["probe_perplexity"]),
        eval_examples=len(examples.conversations),
        eval_set_hash=examples.eval_hash,
        settings_hash=settings_hash,
        samples=tuple(samples.to_dict("records")),
        generation_tokens_per_second=dict(score.speeds),
        max_new_tokens=examples.max_new_tokens,
        generations_cut=dict(score.cut),
        preference_pairs=len(examples.preferences),
        method=method,
        items=items,
        slices=examples.slices,
        pair_slices=examples.pair_slices,
        suites={suite_key(suite): suite.max_regression for suite in score.suites},
    )
