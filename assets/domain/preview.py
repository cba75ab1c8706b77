"""What training will see: the first training examples rendered as the model reads them, with the
tokens that carry loss marked.

Shared, not an asset: `instruction_pairs` shows the preview in its metadata before any training
starts, and `make preview` (pipelines/preview.py) prints it. Both render through `training_tokens`,
the very function the SFT stage trains from, so the preview cannot disagree with training.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from assets.domain.chat import training_chat_template, training_tokens
from assets.domain.preferences import assistant
from assets.domain.rows import row_location

# Marks around the tokens that carry loss; chosen because they are rare in real text.
LOSS_OPEN, LOSS_CLOSE = "⟦", "⟧"
PREVIEW_EXAMPLES = 3


@dataclass(frozen=True)
class PreviewedExample:
    """One training example as the model sees it: `segments` of decoded text, each with whether its
    tokens carry loss."""

    source: str
    tokens: int
    loss_tokens: int
    segments: tuple[tuple[str, bool], ...]

    def marked(self, open_mark: str = LOSS_OPEN, close_mark: str = LOSS_CLOSE) -> str:
        """The text with each run of loss-carrying tokens between the marks."""
        return "".join(f"{open_mark}{text}{close_mark}" if loss else text for text, loss in self.segments)


def previewed(tokenizer, messages: list[dict], tools: list[dict] | None, source: str) -> PreviewedExample:
    """One conversation as SFT trains on it (`training_tokens`), cut into runs of tokens with and
    without loss; each run decoded as the tokenizer decodes it, special tokens shown."""
    encoded = training_tokens(tokenizer, messages, tools, training_chat_template(tokenizer))
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    segments, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or mask[end] != mask[start]:
            segments.append((tokenizer.decode(ids[start:end], skip_special_tokens=False), bool(mask[start])))
            start = end
    return PreviewedExample(source, len(ids), sum(mask), tuple(segments))


@dataclass(frozen=True)
class TrainingPreview:
    """`training_preview`'s value: the first training examples, previewed."""

    examples: tuple[PreviewedExample, ...]


def first_training_rows(rows: Iterable[dict], limit: int = PREVIEW_EXAMPLES) -> list[dict]:
    """The first `limit` rows SFT trains on, from `instruction_pairs` rows in order: the train split's
    conversations, or, when it holds only preference pairs, their prompts with the chosen replies (as
    `fine_tuned_model` trains then). Reads no further than it needs."""
    conversations, pairs = [], []
    for row in rows:
        if row["split"] != "train":
            continue
        if row["kind"] == "sft":
            conversations.append(row)
            if len(conversations) == limit:
                break
        elif len(pairs) < limit:
            pairs.append({**row, "messages": [*row["messages"], assistant(row["chosen"])]})
    return conversations or pairs


def previewed_rows(tokenizer, rows: list[dict]) -> list[PreviewedExample]:
    """`rows` (from `first_training_rows`) previewed, each named by its drop, file and line."""
    return [previewed(tokenizer, r["messages"], r.get("tools"), row_location(r)) for r in rows]


def preview_markdown(preview: list[PreviewedExample]) -> str:
    """The preview for the Dagster UI: per example its source, token counts and marked text."""
    if not preview:
        return "(no training examples)"
    parts = [f"Tokens between {LOSS_OPEN} and {LOSS_CLOSE} carry loss (what the model learns to write)."]
    for example in preview:
        parts.append(
            f"**{example.source}**: {example.tokens} tokens, {example.loss_tokens} with loss\n\n"
            f"```text\n{example.marked()}\n```"
        )
    return "\n\n".join(parts)
