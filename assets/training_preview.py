"""training_preview: the first training examples as the model will see them, before training."""

import dagster as dg

from assets.domain.preview import (
    PREVIEW_EXAMPLES,
    TrainingPreview,
    first_training_rows,
    preview_markdown,
    previewed_rows,
)
from resources.models import ModelLoader
from resources.records import RecordSet


@dg.asset(
    group_name="model",
    kinds={"huggingface"},
    automation_condition=dg.AutomationCondition.eager(),
)
def training_preview(
    context: dg.AssetExecutionContext, base_model: str, instruction_pairs: RecordSet, models: ModelLoader
) -> TrainingPreview:
    """The first examples SFT trains on (the train split's conversations, or the chosen replies of
    its preference pairs when it holds nothing else), rendered by the base model's chat template
    exactly as training renders them, the tokens that carry loss between ⟦ and ⟧: what the model
    learns to write, its end-of-turn token included. Shown in the metadata before training starts;
    `make preview` prints it without training.
    """
    tokenizer = models.load_tokenizer(base_model)
    rows = first_training_rows((r for batch in instruction_pairs.batches() for r in batch), PREVIEW_EXAMPLES)
    preview = TrainingPreview(tuple(previewed_rows(tokenizer, rows)))
    context.add_output_metadata(
        {
            "examples": len(preview.examples),
            "loss_token_share": round(
                sum(p.loss_tokens for p in preview.examples) / max(sum(p.tokens for p in preview.examples), 1), 3
            ),
            "preview": dg.MetadataValue.md(preview_markdown(list(preview.examples))),
        }
    )
    return preview
