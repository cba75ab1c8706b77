"""What training will see, shown before it trains: the `training_preview` asset and `make preview`."""

import pytest

from assets.domain.preview import LOSS_CLOSE, LOSS_OPEN, first_training_rows, previewed_rows
from pipelines.settings import SAMPLE_LANDING

pytestmark = pytest.mark.integration


def test_preview_marks_each_answer_and_its_end_token_as_training_reads_them(pipeline, bundled_tokenizer):
    """The asset's first examples are the train split's first conversations, rendered by the base
    model's template token for token as SFT trains on them: only the answers and <|im_end|> marked."""
    from assets.domain.chat import training_chat_template, training_tokens

    result = pipeline["first"]
    preview = result.output_for_node("training_preview").examples
    pairs = result.output_for_node("instruction_pairs")
    train = [r for b in pairs.batches() for r in b if r["split"] == "train" and r["kind"] == "sft"][: len(preview)]
    assert len(preview) == 3 and [p.source for p in preview] == [
        f"{r['source_file']}:{r['source_line']}" for r in train
    ]
    for example, row in zip(preview, train):
        encoded = training_tokens(
            bundled_tokenizer, row["messages"], row["tools"], training_chat_template(bundled_tokenizer)
        )
        assert (example.tokens, example.loss_tokens) == (len(encoded["input_ids"]), sum(encoded["assistant_masks"]))
        marked = example.marked()
        answer = row["messages"][-1]["content"]
        assert f"{LOSS_OPEN}{answer}<|im_end|>{LOSS_CLOSE}" in marked
        assert marked.count(LOSS_OPEN) == 1, "the system and user turns carry no loss"
    metadata = result.asset_materializations_for_node("training_preview")[0].metadata
    assert LOSS_OPEN in metadata["preview"].value and metadata["examples"].value == 3


def test_preference_only_data_previews_the_chosen_replies(bundled_tokenizer):
    """With only preference pairs, SFT trains on each prompt with its chosen reply: that is previewed."""
    rows = [
        {"split": "eval", "kind": "sft", "messages": [], "source_file": "a", "source_line": 1},
        {"split": "train", "kind": "preference", "source_file": "p.jsonl", "source_line": 2, "tools": None,
         "messages": [{"role": "user", "content": "Pick one."}], "chosen": "this", "rejected": "that"},
    ]  # fmt: skip
    (example,) = previewed_rows(bundled_tokenizer, first_training_rows(rows))
    assert f"{LOSS_OPEN}this<|im_end|>{LOSS_CLOSE}" in example.marked() and example.source == "p.jsonl:2"


def test_make_preview_prints_the_examples_without_training(tmp_path, monkeypatch, capfd, tiny_model_dir):
    """`make preview` ingests, builds the examples and prints them, loss tokens marked; nothing trains."""
    import dagster as dg

    from pipelines import preview

    landing = tmp_path / "landing" / "2026-01-05"
    landing.mkdir(parents=True)
    lines = (SAMPLE_LANDING / "2026-01-05" / "tickets.jsonl").read_text().splitlines()[:30]
    (landing / "tickets.jsonl").write_text("\n".join(lines) + "\n")
    for variable in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("FT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FT_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("FT_PRESET", "smoke")
    monkeypatch.setenv("FT_LANDING_DIR", str(landing.parent))
    assert preview.main(["--examples", "4"]) == 0
    out = capfd.readouterr().out
    assert "tokens that carry loss between ⟦ and ⟧" in out
    assert out.count("--- 2026-01-05/tickets.jsonl:") == 4 and out.count("<|im_end|>⟧") == 4
    with dg.DagsterInstance.get() as instance:
        assert {r.job_name for r in instance.get_runs()} == {"prepare_base_model", "ingest_drop", "training_data"}
        assert not instance.get_latest_materialization_event(dg.AssetKey("fine_tuned_model"))
