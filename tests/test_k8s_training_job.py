"""FT_TRAINING_LAUNCHER=k8s: the training job in a Kubernetes pod of its own (KubernetesTrainingJob around
dagster-k8s' PipesK8sClient), checked without a cluster.

The pod the launcher builds goes through dagster-k8s' own pod builder and the Kubernetes API model: one
GPU per process on a GPU node, FT_HOME's volume, torchrun for several processes, credentials only by
reference to the Secret. Then the real PipesK8sClient launches jobs against a fake Kubernetes API
(`FakeCluster`): creating a pod runs its container's command as a local process with the pod's
environment (Secret and ConfigMap references resolved, the Pipes context as PipesK8sClient injected it),
listing it reports its container's state, and reading its log returns that process's output with
timestamps, which PipesK8sClient's own message reader parses. The real SFT job trains the tiny Llama
that way inside a Dagster materialization; small Pipes jobs written here show a failing pod and an
interrupted step."""

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import kubernetes
import pytest
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster_k8s.client import DagsterK8sError, DagsterKubernetesClient
from dagster_k8s.pipes import build_pod_body
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, PipesDefaultContextLoader, decode_env_var
from kubernetes.client import (
    ApiClient,
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodStatus,
)

from assets.fine_tuned_model import fine_tuned_model
from pipelines.definitions import build_definitions, build_resources
from pipelines.pod_resources import GPU_NODE_SELECTOR, GPU_RESOURCE, GPU_TOLERATIONS, TRAINING_STEPS
from pipelines.settings import REPO_ROOT, Settings
from resources.k8s_training_job import KubernetesTrainingJob, pod_extras
from resources.training_job import PARENT_PID, LocalTrainingJob
from tests.conftest import make_settings
from tests.test_distributed_training import TRAINING, write_pairs
from tests.test_kubernetes_files import step_pods

# The SFT recipe's job module (`Recipe("sft", ...).module`): what the training pod runs.
TRAINING_JOB = "assets.recipes.sft"

SECRET_PASSWORD = "pod-spec-must-not-hold-this"
SECRETS = {"ft-postgres": {"POSTGRES_USER": "dagster", "POSTGRES_PASSWORD": SECRET_PASSWORD}}


def k8s_settings(home: Path, base_model: str = "unused") -> Settings:
    return replace(make_settings(home, base_model), training_launcher="k8s")


def launcher(home: Path, **changes) -> KubernetesTrainingJob:
    """The resource as pipelines/definitions.py builds it for FT_TRAINING_LAUNCHER=k8s, with `changes`."""
    built = build_resources(k8s_settings(home))["training_job"]
    assert isinstance(built, KubernetesTrainingJob)
    return KubernetesTrainingJob(**{**built.model_dump(), **changes})


def pod_dict(pod: V1Pod) -> dict:
    """A pod as the Kubernetes API would receive it (camelCase JSON)."""
    return ApiClient().sanitize_for_serialization(pod)


def pipes_context(pod: dict) -> dict:
    """The Pipes context PipesK8sClient put into the pod's environment, decoded as the job decodes it."""
    (value,) = [e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == DAGSTER_PIPES_CONTEXT_ENV_VAR]
    return decode_env_var(value)[PipesDefaultContextLoader.DIRECT_KEY]


# --- the pod ---------------------------------------------------------------------------------------


def run_context(image: str | None = "registry.example/ft:7"):
    """What the launcher reads of a step's context: the run's id and the image the run started in."""
    origin = SimpleNamespace(repository_origin=SimpleNamespace(container_image=image)) if image else None
    return SimpleNamespace(run_id="run-1", run=SimpleNamespace(job_code_origin=origin))


def test_the_pod_asks_for_one_gpu_per_process_on_a_gpu_node_and_mounts_ft_home(tmp_path):
    arguments = launcher(tmp_path).run_arguments(run_context(), TRAINING_JOB, 2, {"note": "hello"})
    body = build_pod_body(  # dagster-k8s' own builder, as PipesK8sClient.run calls it: it refuses unknown keys
        pod_name="training",
        image=arguments["image"],
        command=arguments["command"],
        env_vars={DAGSTER_PIPES_CONTEXT_ENV_VAR: "context"},
        base_pod_meta=arguments["base_pod_meta"],
        base_pod_spec=arguments["base_pod_spec"],
    )
    pod = pod_dict(body)
    assert ApiClient()._ApiClient__deserialize(pod, "V1Pod") == body, "a valid V1Pod, nothing lost"
    spec = pod["spec"]
    (container,) = spec["containers"]
    torchrun = ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", TRAINING_JOB]
    assert container["command"] == torchrun and container["image"] == "registry.example/ft:7", "the run's image"
    assert container["resources"]["requests"][GPU_RESOURCE] == container["resources"]["limits"][GPU_RESOURCE] == "2"
    assert container["resources"]["requests"]["memory"], "CPU and memory as the GPU step pods ask"
    assert spec["nodeSelector"] == GPU_NODE_SELECTOR and spec["tolerations"] == GPU_TOLERATIONS
    assert spec["restartPolicy"] == "Never" and arguments["namespace"] == "ft-pipeline"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts[str(tmp_path)]]["persistentVolumeClaim"]["claimName"] == "ft-home"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", "NCCL needs more than 64 MiB of shm"
    assert {"secretRef": {"name": "ft-postgres"}} in container["envFrom"]
    assert {"configMapRef": {"name": "ft-settings"}} in container["envFrom"]
    assert [e["name"] for e in container["env"]] == [DAGSTER_PIPES_CONTEXT_ENV_VAR], "no literal settings"
    one = launcher(tmp_path).run_arguments(run_context(), TRAINING_JOB, 1, {})
    assert one["command"] == ["python", "-m", TRAINING_JOB]
    assert one["base_pod_spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "1"


def test_the_pod_gets_no_parent_pid_and_no_password(tmp_path):
    extras = {"training": {"sft": {"max_steps": 3}}, PARENT_PID: 1234}
    arguments = launcher(tmp_path).run_arguments(run_context(), TRAINING_JOB, 1, extras)
    assert arguments["extras"] == {"training": {"sft": {"max_steps": 3}}}, "that process is in another pod"
    with pytest.raises(ValueError, match="carry a password .* MLFLOW_TRACKING_PASSWORD"):
        pod_extras({"mlflow": {"tracking_uri": "http://ft:s3cret@mlflow:5000"}})


def test_the_pod_runs_the_runs_own_image_unless_one_is_set(tmp_path):
    assert launcher(tmp_path, image="mine:1").run_arguments(run_context(), TRAINING_JOB, 1, {})["image"] == "mine:1"
    with pytest.raises(ValueError, match="no image for the training pod"):
        launcher(tmp_path).launch(run_context(image=None), TRAINING_JOB, 1, {})


# --- settings and definitions ----------------------------------------------------------------------


def test_ft_training_launcher_is_validated_by_name(tmp_path):
    assert Settings.from_env({"FT_HOME": str(tmp_path)}).training_launcher == "local"
    assert Settings.from_env({"FT_HOME": str(tmp_path), "FT_TRAINING_LAUNCHER": "k8s"}).training_launcher == "k8s"
    with pytest.raises(
        ValueError, match=r"FT_TRAINING_LAUNCHER='slurm' is not a training launcher. Available: local, k8s"
    ):
        Settings.from_env({"FT_HOME": str(tmp_path), "FT_TRAINING_LAUNCHER": "slurm"})
    secret_uri = {"FT_HOME": str(tmp_path), "FT_TRAINING_LAUNCHER": "k8s", "MLFLOW_TRACKING_URI": "http://u:pw@m:5000"}
    with pytest.raises(ValueError, match=r"http://u:\*\*\*@m:5000.*carries a password") as refused:
        Settings.from_env(secret_uri)
    assert "pw@" not in str(refused.value)


def test_definitions_with_the_k8s_launcher_load_and_the_training_step_pods_are_cpu_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    for settings, launcher_type, step_gpus in (
        (k8s_settings(tmp_path), KubernetesTrainingJob, None),
        (make_settings(tmp_path, "unused"), LocalTrainingJob, "1"),
    ):
        defs = build_definitions(replace(settings, executor="k8s"))
        dg.Definitions.validate_loadable(defs)
        assert isinstance(defs.resources["training_job"], launcher_type)
        # What k8s_job_executor sizes the finetune job's step pods by: its per_step_k8s_config, by op name.
        pods = step_pods(defs, "finetune")
        for step in TRAINING_STEPS:
            defs.resolve_job_def("finetune").graph.node_named(step)  # a step of the job the pod is for
            resources = pods[step].container_config["resources"]
            assert resources["requests"].get(GPU_RESOURCE) == step_gpus, (launcher_type, step)


# --- a fake Kubernetes API, and PipesK8sClient against it -------------------------------------------


def kube_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakePod:
    """A pod's one container, run as a local process in the repository (the image's working directory)."""

    def __init__(self, body: V1Pod, env: dict[str, str]):
        self.body, self.env, self.lines = body, env, []
        command = body.spec.containers[0].command
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:  # the container's log: stdout and stderr together
            self.lines.append(line)

    def exit_code(self) -> int | None:
        """None while it runs (or its output is still being read)."""
        return None if self.reader.is_alive() else self.process.wait()

    def as_listed(self) -> V1Pod:
        code = self.exit_code()
        state = (
            V1ContainerState(running=V1ContainerStateRunning())
            if code is None
            else V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=code))
        )
        name = self.body.spec.containers[0].name
        status = V1ContainerStatus(name=name, image="i", image_id="i", ready=code is None, restart_count=0, state=state)
        phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
        return V1Pod(
            metadata=V1ObjectMeta(name=self.body.metadata.name),
            status=V1PodStatus(phase=phase, container_statuses=[status]),
        )

    def follow(self, interrupt_on: str | None):
        """The log as `kubectl logs -f --timestamps` streams it, until the container ends."""
        sent = 0
        while True:
            ended = self.exit_code() is not None
            while sent < len(self.lines):
                line = self.lines[sent]
                sent += 1
                yield f"{kube_timestamp()} ".encode() + line
                if interrupt_on and interrupt_on in line.decode():
                    # What the step's process gets when its run is terminated, wherever it is waiting.
                    raise DagsterExecutionInterruptedError()
            if ended:
                return
            time.sleep(0.05)


class FakeCluster:
    """The CoreV1Api calls PipesK8sClient makes (create, list, read log, delete a pod; list events)."""

    def __init__(self, config_maps: dict[str, dict[str, str]], interrupt_on: str | None = None):
        self.config_maps, self.interrupt_on = config_maps, interrupt_on
        self.created: list[dict] = []
        self.pods: dict[str, FakePod] = {}
        self.deleted: list[FakePod] = []

    def container_env(self, container) -> dict[str, str]:
        """The container's environment as the kubelet sets it, over the image's (this process's)."""
        env = dict(os.environ)
        for source in container.env_from or []:
            if source.config_map_ref:
                env.update(self.config_maps[source.config_map_ref.name])
            if source.secret_ref:
                env.update(SECRETS[source.secret_ref.name])
        for var in container.env or []:
            ref = var.value_from and var.value_from.secret_key_ref
            env[var.name] = SECRETS[ref.name][ref.key] if ref else var.value
        return env

    def create_namespaced_pod(self, namespace, body):
        self.created.append({"namespace": namespace, **pod_dict(body)})
        self.pods[body.metadata.name] = FakePod(body, self.container_env(body.spec.containers[0]))

    def list_namespaced_pod(self, namespace, field_selector):
        pod = self.pods.get(field_selector.removeprefix("metadata.name="))
        return SimpleNamespace(items=[pod.as_listed()] if pod else [])

    def read_namespaced_pod_log(self, name, namespace, follow=False, **kwargs):
        pod = self.pods[name]
        if follow:
            return pod.follow(self.interrupt_on)
        return SimpleNamespace(data=b"".join(pod.lines))

    def delete_namespaced_pod(self, name, namespace):
        pod = self.pods.pop(name)
        if pod.process.poll() is None:
            pod.process.kill()
        pod.process.wait()
        self.deleted.append(pod)

    def list_namespaced_event(self, namespace, field_selector):
        return SimpleNamespace(items=[])


@pytest.fixture
def cluster_with(monkeypatch):
    """Installs a FakeCluster where PipesK8sClient reaches the Kubernetes API."""

    def install(config_maps: dict[str, dict[str, str]], interrupt_on: str | None = None) -> FakeCluster:
        cluster = FakeCluster(config_maps, interrupt_on)
        client = DagsterKubernetesClient(
            batch_api=None,
            core_api=cluster,
            logger=lambda *_: None,
            sleeper=lambda _: time.sleep(0.05),
            timer=time.time,
        )
        monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda: None)
        monkeypatch.setattr(DagsterKubernetesClient, "production_client", staticmethod(lambda *_, **__: client))
        return cluster

    return install


def launch_asset(module: str) -> dg.AssetsDefinition:
    @dg.asset(name="training")
    def training(context: dg.AssetExecutionContext, training_job: KubernetesTrainingJob):
        invocation = training_job.launch(context, module, 1, {"note": "hello", PARENT_PID: os.getpid()})
        return invocation.get_custom_messages()

    return training


SMALL_JOB = """
import sys, time
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    pipes.log.info("job started")
    if sys.argv[0].endswith("failing_job.py"):
        raise SystemExit("the job broke")
    time.sleep(120)
"""


@pytest.fixture
def small_jobs(tmp_path) -> Path:
    for name in ("failing_job", "waiting_job"):
        (tmp_path / f"{name}.py").write_text(SMALL_JOB)
    return tmp_path


def test_a_failing_pod_fails_the_step_with_its_log_and_is_deleted(tmp_path, small_jobs, cluster_with):
    cluster = cluster_with({"ft-settings": {"PYTHONPATH": str(small_jobs)}})
    job = launcher(tmp_path, image="ft-pipeline:test", python=sys.executable)
    result = dg.materialize([launch_asset("failing_job")], resources={"training_job": job}, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error, chain = failure.step_failure_data.error, []
    while error is not None:
        chain, error = chain + [error], error.cause
    (pod_error,) = [e for e in chain if e.cls_name == DagsterK8sError.__name__]
    assert "the job broke" in pod_error.message, "the pod's last log lines"
    (pod,) = cluster.deleted
    assert pod.process.returncode == 1 and not cluster.pods


def test_interrupting_the_step_deletes_the_pod_and_stops_the_job(tmp_path, small_jobs, cluster_with):
    cluster = cluster_with({"ft-settings": {"PYTHONPATH": str(small_jobs)}}, interrupt_on="job started")
    job = launcher(tmp_path, image="ft-pipeline:test", python=sys.executable)
    started = time.time()
    with pytest.raises(DagsterExecutionInterruptedError):
        dg.materialize([launch_asset("waiting_job")], resources={"training_job": job})
    (pod,) = cluster.deleted
    assert pod.process.returncode is not None and time.time() - started < 60, "the job was stopped, not awaited"
    (created,) = cluster.created
    assert pipes_context(created)["extras"] == {"note": "hello"}, "no PARENT_PID: its process is not in this pod"


@pytest.mark.integration
def test_the_sft_job_trains_in_its_own_pod_through_pipes_k8s_client(tmp_path, tiny_model_dir, cluster_with):
    """fine_tuned_model as FT_TRAINING_LAUNCHER=k8s deploys it, the real SFT job on the tiny Llama."""
    settings = k8s_settings(tmp_path, str(tiny_model_dir)).prepare()
    cluster = cluster_with({"ft-settings": {"FT_HOME": str(settings.home)}})

    @dg.asset(name="base_model")
    def base_model():
        return str(tiny_model_dir)

    training = {**TRAINING, "num_processes": 1, "sft": {**TRAINING["sft"], "per_device_train_batch_size": 4}}
    resources = build_resources(settings, {"training": training})
    resources["training_job"] = launcher(settings.home, image="ft-pipeline:test", python=sys.executable)
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [base_model, write_pairs(tmp_path), fine_tuned_model],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert result.success, [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]

    trained = result.output_for_node("fine_tuned_model")
    assert trained.steps == 4 and [s for s, _ in trained.loss_curve] == [1, 2, 3, 4]
    assert Path(trained.adapter_dir, "adapter_model.safetensors").is_file()
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("train step 4/4" in message for message in logs), "the job's progress reached the run's log"

    (created,) = cluster.created
    (container,) = created["spec"]["containers"]
    assert container["command"] == [sys.executable, "-m", TRAINING_JOB]
    assert (
        container["resources"]["limits"][GPU_RESOURCE] == "1"
        and created["metadata"]["labels"]["dagster/run-id"] == result.run_id
    )
    assert PARENT_PID not in pipes_context(created)["extras"] and pipes_context(created)["extras"]["out_dir"]
    assert SECRET_PASSWORD not in json.dumps(created), "the Secret is referenced, never copied into the spec"
    (pod,) = cluster.deleted
    assert pod.env["POSTGRES_PASSWORD"] == SECRET_PASSWORD and pod.process.returncode == 0
