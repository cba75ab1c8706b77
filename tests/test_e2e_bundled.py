"""End to end on the embedded default: the bundled SmolLM2-135M-Instruct, sample data, preset smoke."""

import pytest
from mlflow import MlflowClient

from pipelines.run import gate_only_failure
from resources.models import BUNDLED_BASE_MODEL
from tests.conftest import make_settings, run_all

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("ft_e2e")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    settings = make_settings(home, BUNDLED_BASE_MODEL, preset="smoke").prepare()
    _, instance, result, problems = run_all(settings)
    yield settings, result
    mp.undo()


def test_bundled_base_model_is_converted_and_answers(run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, result = run
    folder = result.output_for_node("base_model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.num_parameters() == pytest.approx(134.5e6, rel=0.01)
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_smoke_run_registers_a_version_trained_on_the_bundled_model(run):
    settings, result = run
    # three steps teach the model nothing, so the gate keeps the champion: an outcome, not an error
    assert result.success or gate_only_failure(result.all_events)
    assert not result.output_for_node("registered_model").gate.passed
    registered = result.output_for_node("registered_model")
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    version = client.get_model_version_by_alias(settings.model_name, "challenger")
    assert str(version.version) == registered.version
    params = client.get_run(version.run_id).data.params
    # named for people; the prepared folder, which champion re-scoring matches, is a version tag
    assert params["base_model"] == "smollm2-135m-instruct"
    assert version.tags["base_model.path"].endswith("bundled_smollm2-135m-instruct")
    assert params["preset"] == "smoke" and params["train.sft.max_steps"] == "3"
    trained = result.output_for_node("fine_tuned_model")
    assert trained.steps == 3 and trained.train_loss > 0
