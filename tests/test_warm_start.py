"""Warm start: a retrain continues from the champion on the drops new to it plus a replay share of the
older ones, records its parent, and is gated against the champion as before.

The selection of rows is tested on frames; the retrains run for real (the tiny model, the sample drops
landing one after another, `make run`'s driver, MLflow on sqlite): the champion's adapter trained on
when it fits the settings, its merged weights under a new adapter when it does not.
"""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from assets.domain.lineage import BASE_MODEL_PATH_TAG
from assets.domain.warm_start import PARENT_VERSION_TAG, replay_count, with_replay
from pipelines.settings import SAMPLE_LANDING
from tests.conftest import make_settings, run_all


def frame(drops: dict[str, int]) -> pd.DataFrame:
    rows = [{"example_id": f"{drop}-{i}", "drop": drop} for drop, n in drops.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_replay_makes_its_share_of_the_examples():
    train = frame({"d1": 40, "d2": 40, "d3": 30})
    rows, (new, replayed, old) = with_replay(train, ("d1", "d2"), 0.25, seed=0)
    assert (new, replayed, old) == (30, 10, 80)
    assert len(rows) == 40 and rows["drop"].eq("d3").sum() == 30
    assert replayed / len(rows) == 0.25
    assert rows["drop"].iloc[30:].isin(["d1", "d2"]).all(), "new rows first, then the replay"


def test_replay_is_chosen_by_example_and_seed_not_by_row_order():
    train = frame({"d1": 50, "d2": 20})
    chosen = set(with_replay(train, ("d1",), 0.5, seed=3)[0]["example_id"])
    shuffled = set(with_replay(train.sample(frac=1, random_state=7), ("d1",), 0.5, seed=3)[0]["example_id"])
    assert chosen == shuffled
    assert chosen != set(with_replay(train, ("d1",), 0.5, seed=4)[0]["example_id"]), "another seed, another replay"


def test_replay_edges():
    assert replay_count(10, 3, 0.5) == 3, "at most every old row"
    assert replay_count(10, 100, 0.0) == 0
    assert replay_count(0, 100, 0.5) == 0
    train = frame({"d1": 5})
    rows, counts = with_replay(train, ("d1",), 0.25, seed=0)
    assert len(rows) == 5 and counts == (0, 0, 5), "nothing new: the whole train split trains again"
    rows, counts = with_replay(frame({"d2": 6}), ("d1",), 0.25, seed=0)
    assert len(rows) == 6 and counts == (6, 0, 0), "no old rows: nothing to replay"


@pytest.mark.integration
def test_retrains_continue_from_the_champion(tmp_path, tiny_model_dir, monkeypatch):
    """Drops land one after another. The first run trains from the base (method sft: its adapter applies to
    the base) and becomes champion; the second, on a new drop with start_from champion, trains the
    champion's own adapter on and replays older rows; the third asks for another adapter shape, so a new
    adapter goes on the champion's merged weights. Each records its parent and is gated against it."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    landing = tmp_path / "landing"
    landing.mkdir()
    settings = make_settings(tmp_path / "home", str(tiny_model_dir), landing=landing).prepare()
    gate = {"min_improvement": -1.0, "min_gain_over_champion": -1.0, "max_forgetting_pct": 1000.0}
    gate |= {"min_preference_gain": -1.0}
    warm = {"method": "sft", "start_from": "champion", "replay_fraction": 0.25}

    for drop in ("2026-01-05", "2026-01-12"):
        shutil.copytree(SAMPLE_LANDING / drop, landing / drop)
    _, instance, first, _ = run_all(settings, {"gate": gate, "training": warm})
    assert first.success
    started = first.output_for_node("fine_tuned_model").warm_start
    assert started.parent is None and "no champion yet" in started.how

    shutil.copytree(SAMPLE_LANDING / "2026-01-19", landing / "2026-01-19")
    _, _, second, _ = run_all(settings, {"gate": gate, "training": warm}, instance)
    assert second.success
    pairs = second.output_for_node("instruction_pairs").frame()
    train = pairs[pairs["split"].eq("train") & pairs["kind"].eq("sft")]
    new_rows, old_rows = int(train["drop"].eq("2026-01-19").sum()), int(train["drop"].ne("2026-01-19").sum())
    sft = second.output_for_node("fine_tuned_model")
    assert sft.warm_start.parent == "1" and "its adapter" in sft.warm_start.how
    assert (sft.warm_start.new_rows, sft.warm_start.old_rows) == (new_rows, old_rows)
    assert sft.warm_start.replay_rows == round(new_rows / 3) and sft.train_examples == new_rows + round(new_rows / 3)
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    base = client.get_model_version("test-model", "1").tags[BASE_MODEL_PATH_TAG]
    assert sft.adapter_applies_to(base), "the champion's adapter, trained on, still applies to the base"
    # Downloaded once per parent version, not per run: the folder names the training setup, so a killed warm
    # start resumes when make run is launched again (a run's own folder would make every attempt a new setup).
    parent_adapter = tmp_path / "home" / "artifacts" / "fine_tuned_model" / "parent-v1" / "adapter"
    assert adapters_differ(parent_adapter, Path(sft.adapter_dir)), "trained on from the champion's adapter"
    version = client.get_model_version("test-model", "2")
    assert version.tags[PARENT_VERSION_TAG] == "1"
    run = client.get_run(version.run_id)
    assert run.data.params["train.parent_version"] == "1"
    assert run.data.params["data.replay_rows"] == str(sft.warm_start.replay_rows)
    evaluation = second.output_for_node("model_evaluation")
    assert evaluation.champion is not None and evaluation.champion.version == "1", "gated against the champion"
    assert "Continued from version 1" in version.description, "the model card says where it grew from"

    # Another rank: the champion's adapter does not fit, so a new one goes on its merged weights.
    _, _, third, _ = run_all(settings, {"gate": gate, "training": {**warm, "lora_r": 4}}, instance)
    assert third.success
    sft = third.output_for_node("fine_tuned_model")
    assert sft.warm_start.parent == "2" and "merged weights" in sft.warm_start.how
    assert "no drop is new" in sft.warm_start.how and sft.train_examples == len(train), "nothing new: all again"
    assert not sft.adapter_applies_to(base) and "parent-v2" in sft.adapter_base_dir
    assert json.loads((Path(sft.adapter_dir) / "adapter_config.json").read_text())["r"] == 4
    assert client.get_model_version("test-model", "3").tags[PARENT_VERSION_TAG] == "2"


def adapters_differ(a: Path, b: Path) -> bool:
    """Whether two saved adapters hold the same tensors with different values (same shape: one trained on)."""
    first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    return any(not first[k].equal(second[k]) for k in first)
