"""The Kubernetes deployment (pipelines/kubernetes/), checked as far as no cluster allows: the
instance config loads through Dagster's own schema and builds a real K8sRunLauncher and run queue,
the manifests parse and name the image the Dockerfile builds and settings that pipelines/settings.py
reads, and the k8s executor asks dagster-k8s for the pods the steps need (its `per_step_k8s_config`: a
GPU node for training and evaluation, CPU only for the data stages). The training job's own pod
(FT_TRAINING_LAUNCHER=k8s) uses the same namespace, volume, ConfigMaps and Secret, and the Role lets
the step create and follow it.
(tests/test_k8s_training_job.py launches it through PipesK8sClient against a fake API.)"""

import re
from dataclasses import replace

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes import ConfigurableClassData
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.job import UserDefinedDagsterK8sConfig
from dagster_postgres import DagsterPostgresStorage

from pipelines.definitions import build_definitions, build_resources
from pipelines.pod_resources import GPU_RESOURCE
from pipelines.settings import REPO_ROOT, Settings
from resources.k8s_training_job import KubernetesTrainingJob
from tests.conftest import make_settings

KUBERNETES = REPO_ROOT / "pipelines" / "kubernetes"
GPU_STAGES = ("fine_tuned_model", "preference_tuned_model", "model_evaluation")
DATA_STAGES = ("raw_records", "validated_records", "instruction_pairs")
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: ft-pipeline}}]
current-context: x
"""


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]


def kustomization() -> dict:
    (document,) = documents("kustomization.yaml")
    return document


def containers() -> list[dict]:
    """Every container of the manifests' Deployments and StatefulSets."""
    workloads = [d for d in documents("ft-pipeline.yaml") if d["kind"] in ("Deployment", "StatefulSet")]
    return [c for w in workloads for c in w["spec"]["template"]["spec"]["containers"]]


def settings_literals() -> dict[str, str]:
    (settings,) = [g for g in kustomization()["configMapGenerator"] if g["name"] == "ft-settings"]
    return dict(literal.split("=", 1) for literal in settings["literals"])


@pytest.fixture
def instance_config(monkeypatch):
    monkeypatch.setenv("POSTGRES_USER", "dagster")
    monkeypatch.setenv("POSTGRES_PASSWORD", "secret")
    config, custom_class = dagster_instance_config(str(KUBERNETES))
    assert custom_class is None
    return config


def test_the_instance_config_loads_through_dagsters_schema(instance_config, tmp_path):
    assert instance_config["run_launcher"]["class"] == "K8sRunLauncher"
    assert instance_config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    postgres = process_config(DagsterPostgresStorage.config_type(), instance_config["storage"]["postgres"])
    assert postgres.success, postgres.errors
    assert postgres.value["postgres_db"]["password"] == "secret", "the password comes from the Secret's env"
    # The run launcher and the run queue as Dagster builds them (no cluster: a stand-in kubeconfig).
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    launcher_config = {**instance_config["run_launcher"]["config"], "load_incluster_config": False}
    launcher = ConfigurableClassData(
        "dagster_k8s", "K8sRunLauncher", yaml.safe_dump({**launcher_config, "kubeconfig_file": str(kubeconfig)})
    ).rehydrate(K8sRunLauncher)
    assert launcher.instance_config_map == "ft-dagster-instance" and launcher.job_namespace == "ft-pipeline"
    coordinator = instance_config["run_coordinator"]
    queue = ConfigurableClassData(coordinator["module"], coordinator["class"], yaml.safe_dump({})).rehydrate(
        dg.QueuedRunCoordinator
    )
    assert isinstance(queue, dg.QueuedRunCoordinator)


def test_the_run_launcher_names_the_configmaps_secrets_and_volume_the_manifests_make(instance_config):
    launcher = instance_config["run_launcher"]["config"]
    generated = {g["name"] for g in kustomization()["configMapGenerator"]}
    assert launcher["instance_config_map"] in generated and set(launcher["env_config_maps"]) <= generated
    manifests = documents("ft-pipeline.yaml")
    claims = {d["metadata"]["name"] for d in manifests if d["kind"] == "PersistentVolumeClaim"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in launcher["volumes"]} <= claims
    accounts = {d["metadata"]["name"] for d in manifests if d["kind"] == "ServiceAccount"}
    assert launcher["service_account_name"] in accounts
    secrets = {s["secretRef"]["name"] for c in containers() for s in c.get("envFrom", []) if "secretRef" in s}
    assert set(launcher["env_secrets"]) == secrets == {"ft-postgres"}
    assert (
        launcher["dagster_home"] == settings_literals()["DAGSTER_HOME"] == settings_literals()["FT_HOME"] + "/dagster"
    )


def test_the_manifests_run_the_image_the_dockerfile_builds():
    dockerfile = (KUBERNETES / "Dockerfile").read_text()
    image = re.search(r"docker build -f pipelines/kubernetes/Dockerfile -t (\S+) \.", dockerfile).group(1)
    name, tag = image.split(":")
    assert {"name": name, "newTag": tag} in kustomization()["images"]
    ours = [c for c in containers() if not c["image"].startswith("postgres:")]
    assert ours and {c["image"] for c in ours} == {image}
    current = [e["value"] for c in ours for e in c.get("env", []) if e["name"] == "DAGSTER_CURRENT_IMAGE"]
    assert current == [image], "the run launcher starts runs and steps in the code location's image"
    for folder in re.findall(r"^COPY (\w+) ", dockerfile, re.MULTILINE):
        assert (REPO_ROOT / folder).is_dir()


def test_the_settings_they_set_are_ones_the_pipeline_reads():
    settings_source = (REPO_ROOT / "pipelines" / "settings.py").read_text()
    names = set(settings_literals()) | {e["name"] for c in containers() for e in c.get("env", [])}
    pipeline_settings = {n for n in names if n.startswith("FT_") or n == "MLFLOW_TRACKING_URI"}
    assert {"FT_HOME", "FT_EXECUTOR", "FT_PRESET"} <= pipeline_settings
    for name in pipeline_settings:
        assert f'"{name}"' in settings_source, f"{name} is not read by pipelines/settings.py"
    assert settings_literals()["FT_EXECUTOR"] == "k8s" and settings_literals()["FT_PRESET"] in ("gpu", "cpu")
    services = {d["metadata"]["name"] for d in documents("ft-pipeline.yaml") if d["kind"] == "Service"}
    assert settings_literals()["MLFLOW_TRACKING_URI"].split("//")[1].split(":")[0] in services
    (workspace,) = documents("workspace.yaml")
    assert workspace["load_from"][0]["grpc_server"]["host"] in services


def step_pods(definitions: dg.Definitions, job: str = "finetune") -> dict[str, UserDefinedDagsterK8sConfig]:
    """Each step's pod as `job`'s k8s_job_executor reads it: its `per_step_k8s_config` (op name -> pod),
    through Dagster's config schema and dagster-k8s' own parsing."""
    processed = definitions.resolve_job_def(job).executor_def.apply_config_mapping({})
    assert processed.success, processed.errors
    pods = processed.value["config"]["per_step_k8s_config"]
    return {step: UserDefinedDagsterK8sConfig.from_dict(pod) for step, pod in pods.items()}


def job_ops(job) -> set[str]:
    return {node.name for node in job.nodes}


def test_training_and_evaluation_ask_for_a_gpu_node_and_data_stages_do_not(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    definitions = build_definitions(replace(make_settings(tmp_path, "unused"), executor="k8s"))
    jobs = [job for job in definitions.resolve_all_job_defs() if not job.name.startswith("__")]
    ops = {node.name for job in jobs for node in job.nodes}
    assert set(step_pods(definitions)) <= ops, f"pods for steps no job has: {set(step_pods(definitions)) - ops}"
    # Each stage's pod as the executor of every job that runs it reads it.
    sized = [
        (s, step_pods(definitions, job.name)[s]) for job in jobs for s in job_ops(job) if s in GPU_STAGES + DATA_STAGES
    ]
    assert {stage for stage, _ in sized} == set(GPU_STAGES + DATA_STAGES)
    for stage, config in sized:
        resources = config.container_config["resources"]
        if stage in GPU_STAGES:
            assert int(resources["requests"][GPU_RESOURCE]) >= 1 and int(resources["limits"][GPU_RESOURCE]) >= 1
            assert config.pod_spec_config["node_selector"], f"{stage} runs on a GPU node"
        else:
            assert GPU_RESOURCE not in resources["requests"] and GPU_RESOURCE not in resources.get("limits", {})
            assert resources["requests"]["cpu"], f"{stage} asks for CPU only"


def test_ft_executor_k8s_runs_each_step_in_its_own_pod(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    settings = replace(make_settings(tmp_path, "unused"), executor="k8s")
    executor = build_definitions(settings).resolve_job_def("finetune").executor_def
    assert executor.executor_creation_fn is k8s_job_executor.executor_creation_fn, "k8s_job_executor, configured"
    local = build_definitions(make_settings(tmp_path, "unused")).resolve_job_def("finetune")
    assert local.executor_def.executor_creation_fn is not k8s_job_executor.executor_creation_fn


def test_the_training_pod_uses_the_deployments_namespace_volume_configmaps_and_secret(instance_config):
    settings = Settings.from_env(settings_literals())  # what every pod of the deployment reads
    assert settings.training_launcher == "k8s"
    job = build_resources(settings)["training_job"]
    assert isinstance(job, KubernetesTrainingJob)
    assert job.namespace == kustomization()["namespace"]
    launcher = instance_config["run_launcher"]["config"]
    assert job.env_config_maps == launcher["env_config_maps"] and job.env_secrets == launcher["env_secrets"]
    (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in launcher["volumes"]]
    (mount,) = launcher["volume_mounts"]
    assert job.home_claim == claim and job.home_path == mount["mountPath"] == settings_literals()["FT_HOME"]


def test_the_role_lets_the_training_step_create_follow_and_delete_its_pod(instance_config):
    (role,) = [d for d in documents("ft-pipeline.yaml") if d["kind"] == "Role"]
    allowed = {
        (r, v) for rule in role["rules"] if "" in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    # What PipesK8sClient calls: create, list and watch the pod, read its log, delete it.
    needed = {("pods", v) for v in ("create", "get", "list", "watch", "delete")} | {("pods/log", "get")}
    assert needed <= allowed, needed - allowed
    (binding,) = [d for d in documents("ft-pipeline.yaml") if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # Bound to the account the run and step pods run as: the step launches the training pod.
    assert {s["name"] for s in binding["subjects"]} == {
        instance_config["run_launcher"]["config"]["service_account_name"]
    }
