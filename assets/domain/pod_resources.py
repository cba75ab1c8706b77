"""What pod each stage needs on Kubernetes, as the `dagster-k8s/config` op tag that dagster-k8s'
`k8s_job_executor` reads (one pod per step; `pipelines/kubernetes/`). Elsewhere the tags are inert.

Training and evaluation ask for a GPU on a GPU node; the data stages ask for CPU and memory only, so
they never hold a GPU. A training with `training.num_processes` N that runs inside its step's pod
(FT_TRAINING_LAUNCHER=local) needs N GPUs there: raise `GPUS_PER_TRAINING_POD` with it. With
FT_TRAINING_LAUNCHER=k8s the training job gets a pod of its own with N GPUs (KubernetesTrainingJob,
built from the values below) and the `fine_tuned_model` step's pod asks for CPU only.
"""

K8S_CONFIG_TAG = "dagster-k8s/config"
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
    K8S_CONFIG_TAG: {
        "container_config": {
            "resources": {
                "requests": {**GPU_POD_REQUESTS, GPU_RESOURCE: str(GPUS_PER_TRAINING_POD)},
                "limits": {**GPU_POD_LIMITS, GPU_RESOURCE: str(GPUS_PER_TRAINING_POD)},
            }
        },
        "pod_spec_config": {"node_selector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS},
    }
}

CPU_POD = {
    K8S_CONFIG_TAG: {
        "container_config": {
            "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
        }
    }
}
