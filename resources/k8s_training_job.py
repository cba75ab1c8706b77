"""The training job in a Kubernetes pod of its own, launched and followed through dagster-k8s' PipesK8sClient.

`KubernetesTrainingJob` is the `training_job` resource when FT_TRAINING_LAUNCHER=k8s
(pipelines/kubernetes/). The Dagster step starts one pod that runs the job (`python -m MODULE`, or
torchrun with one process per GPU) on a GPU node, asking for as many GPUs as processes, and waits
for it. The pod runs the run's own image, mounts FT_HOME's volume at the same path as the step (the
job's examples, checkpoints and outputs are there), and takes its environment from the same
ConfigMap and Secret as every other pod of the deployment (`envFrom`: no value of the Secret is
written into its spec). PipesK8sClient hands the job its Pipes context (the extras) in an
environment variable of the pod and reads the job's messages from the pod's log; when the step
ends, fails or is interrupted (the run terminated), it deletes the pod, which stops the training.

    training_job = KubernetesTrainingJob(home_path="/data/ft", gpu_resource="nvidia.com/gpu")
    invocation = training_job.launch(context, "assets.recipes.sft", num_processes=2, extras={...})
"""

import json
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from resources.credentials import has_password
from resources.training_job import PARENT_PID, TrainingJobClient, job_command

HOME_VOLUME = "ft-home"
# NCCL and DataLoader workers share tensors through /dev/shm, which a container gets only 64 MiB of.
SHM_VOLUME = "dshm"
JOB_CONTAINER = "training"


def pod_extras(extras: Mapping[str, Any]) -> dict[str, Any]:
    """The extras as the pod gets them: without `PARENT_PID` (that process is in another pod: the job
    would find it gone and stop at once), and refused if a password is in them (the Pipes context
    is an environment variable written into the pod's spec, which whoever may read pods can read)."""
    if has_password(json.dumps(extras, default=str)):
        raise ValueError(
            "The training job's settings carry a password (a URL with user:password@, such as "
            "MLFLOW_TRACKING_URI), and FT_TRAINING_LAUNCHER=k8s would write them into its pod's spec. "
            "Give the URL without the password and the credentials through the Secret "
            "(e.g. MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in ft-postgres)."
        )
    return {k: v for k, v in extras.items() if k != PARENT_PID}


def run_image(context) -> str:
    """The image the run started in: the code location's (its DAGSTER_CURRENT_IMAGE), which dagster-k8s
    gives every run and step pod. Empty where the run has none (a run outside Kubernetes)."""
    origin = getattr(context.run, "job_code_origin", None)
    return (origin and origin.repository_origin.container_image) or ""


class KubernetesTrainingJob(TrainingJobClient):
    """The job in a pod of its own on a GPU node, one GPU per process (dagster_k8s.PipesK8sClient): its
    Pipes log lines reach the run's log from the pod's log; interrupting the step deletes the pod."""

    home_path: str = Field(
        description="FT_HOME as the step sees it. The volume is mounted at the same path in the job's pod, "
        "so the folders named in the extras are the same there."
    )
    gpu_resource: str = Field(description="The extended resource a GPU is asked for as: one per process.")
    node_selector: dict[str, str] = Field(default={}, description="Node labels the pod must match (GPU nodes).")
    tolerations: list[dict[str, str]] = Field(default=[], description="Taints the pod tolerates (GPU nodes').")
    requests: dict[str, str] = Field(default={}, description="CPU and memory the pod asks for, beside its GPUs.")
    limits: dict[str, str] = Field(default={}, description="CPU and memory limits of the pod, beside its GPUs.")
    image: str = Field(
        default="",
        description="Image of the job's pod. Empty: the run's own image (the code location's "
        "DAGSTER_CURRENT_IMAGE, which dagster-k8s starts run and step pods in).",
    )
    namespace: str = Field(default="ft-pipeline", description="Namespace the pod runs in (the deployment's).")
    home_claim: str = Field(default="ft-home", description="PersistentVolumeClaim holding FT_HOME (ReadWriteMany).")
    env_config_maps: list[str] = Field(
        default=["ft-settings"],
        description="ConfigMaps whose entries become the pod's environment (the FT_* settings).",
    )
    env_secrets: list[str] = Field(
        default=["ft-postgres"],
        description="Secrets whose entries become the pod's environment (credentials; referenced, never copied).",
    )
    service_account: str = Field(
        default="", description="Service account of the pod (empty: the namespace's default; the job calls no API)."
    )
    python: str = Field(default="python", description="Python interpreter in the image that runs the job.")
    load_incluster_config: bool = Field(
        default=True,
        description="Reach the Kubernetes API as a pod does (its service account). False: the default kubeconfig.",
    )

    def pod_spec(self, num_processes: int) -> dict[str, Any]:
        """The job's pod, less what PipesK8sClient adds (image, command, the Pipes environment variables)."""
        gpus = {self.gpu_resource: str(num_processes)}
        container = {
            "name": JOB_CONTAINER,
            "resources": {"requests": {**self.requests, **gpus}, "limits": {**self.limits, **gpus}},
            "envFrom": [{"configMapRef": {"name": name}} for name in self.env_config_maps]
            + [{"secretRef": {"name": name}} for name in self.env_secrets],
            "volumeMounts": [
                {"name": HOME_VOLUME, "mountPath": self.home_path},
                {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
            ],
        }
        spec = {
            "restartPolicy": "Never",  # a failed job fails the step; re-executing resumes from its checkpoint
            "containers": [container],
            "nodeSelector": dict(self.node_selector),
            "tolerations": [dict(t) for t in self.tolerations],
            "volumes": [
                {"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": self.home_claim}},
                {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}},
            ],
        }
        return {**spec, "serviceAccountName": self.service_account} if self.service_account else spec

    def run_arguments(self, context, module: str, num_processes: int, extras: Mapping[str, Any]) -> dict[str, Any]:
        """What `launch` hands PipesK8sClient.run beside the context: the job's extras, command and pod."""
        image = self.image or run_image(context)
        if not image:
            raise ValueError(
                "KubernetesTrainingJob has no image for the training pod: set the resource's `image`, or run "
                "from a code location started with DAGSTER_CURRENT_IMAGE (pipelines/kubernetes/ft-pipeline.yaml)."
            )
        return {
            "extras": pod_extras(extras),
            "image": image,
            "command": job_command(self.python, module, num_processes),
            "namespace": self.namespace,
            "base_pod_meta": {
                "labels": {"app.kubernetes.io/component": "training-job", "dagster/run-id": context.run_id}
            },
            "base_pod_spec": self.pod_spec(num_processes),
        }

    def launch(self, context, module: str, num_processes: int, extras: Mapping[str, Any]):
        from dagster_k8s import PipesK8sClient

        arguments = self.run_arguments(context, module, num_processes, extras)
        return PipesK8sClient(load_incluster_config=self.load_incluster_config).run(context=context, **arguments)
