"""What pod each step needs on Kubernetes (FT_EXECUTOR=k8s): dagster-k8s' `k8s_job_executor` runs
every step in a pod of its own, sized by its entry in the executor's `per_step_k8s_config`
(`step_pods`, set in pipelines/definitions.py). Elsewhere none of this is read.

Training and evaluation ask for a GPU on a GPU node; the data stages ask for CPU and memory only, so
they never hold a GPU. A training with `training.num_processes` N that runs inside its step's pod
(FT_TRAINING_LAUNCHER=local) needs N GPUs there: raise `GPUS_PER_TRAINING_POD` with it. With
FT_TRAINING_LAUNCHER=k8s each training job gets a pod of its own with N GPUs (KubernetesTrainingJob,
built from the values below) and the training steps' pods, which only prepare and wait, ask for CPU only.
"""

GPU_RESOURCE = "nvidia.com/gpu"
# The label NVIDIA's GPU operator (GPU feature discovery) puts on every node with a GPU.
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
# GPU nodes are usually tainted so that only pods asking for a GPU land there.
GPU_TOLERATIONS = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
# CPU and memory of a pod that trains or evaluates, beside its GPUs.
GPU_POD_REQUESTS = {"cpu": "4", "memory": "32Gi"}
GPU_POD_LIMITS = {"memory": "64Gi"}
GPUS_PER_TRAINING_POD = 1

GPU_POD = {
    "container_config": {
        "resources": {
            "requests": {**GPU_POD_REQUESTS, GPU_RESOURCE: str(GPUS_PER_TRAINING_POD)},
            "limits": {**GPU_POD_LIMITS, GPU_RESOURCE: str(GPUS_PER_TRAINING_POD)},
        }
    },
    "pod_spec_config": {"node_selector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS},
}
CPU_POD = {"container_config": {"resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}}}

# The steps that train (each launches a recipe's job) and the step that evaluates (it loads the models itself).
TRAINING_STEPS = ("fine_tuned_model", "preference_tuned_model")
GPU_STEPS = ("model_evaluation",)
CPU_STEPS = ("raw_records", "validated_records", "instruction_pairs", "training_preview")
# A sweep's training step: fine_tuned_model's op that trains one point (k8s_job_executor sizes a step by its op's name).
SWEEP_TRAINING_STEP = "train_point"


def step_pods(training_launcher: str, sweep: bool = False) -> dict[str, dict]:
    """Each step's pod, by op name: a GPU pod for evaluation, and for training when its job runs inside
    the step's pod (`local`); a CPU pod for training when the job gets a GPU pod of its own (`k8s`).
    `sweep`: fine_tuned_model is a sweep, whose points train in steps of op `train_point`."""
    training = CPU_POD if training_launcher == "k8s" else GPU_POD
    return {
        **{step: CPU_POD for step in CPU_STEPS},
        **{step: GPU_POD for step in GPU_STEPS},
        **{step: training for step in TRAINING_STEPS + ((SWEEP_TRAINING_STEP,) if sweep else ())},
    }
