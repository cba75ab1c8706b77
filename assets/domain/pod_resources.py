"""What pod each stage needs on Kubernetes, as the `dagster-k8s/config` op tag that dagster-k8s'
`k8s_job_executor` reads (one pod per step; `pipelines/kubernetes/`). Elsewhere the tags are inert.

Training and evaluation ask for a GPU on a GPU node; the data stages ask for CPU and memory only, so
they never hold a GPU. A training with `training.num_processes` N needs N GPUs in its pod: raise
`GPUS_PER_TRAINING_POD` with it.
"""

K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"
# The label NVIDIA's GPU operator (GPU feature discovery) puts on every node with a GPU.
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPUS_PER_TRAINING_POD = 1

GPU_POD = {
    K8S_CONFIG_TAG: {
        "container_config": {
            "resources": {
                "requests": {"cpu": "4", "memory": "32Gi", GPU_RESOURCE: str(GPUS_PER_TRAINING_POD)},
                "limits": {"memory": "64Gi", GPU_RESOURCE: str(GPUS_PER_TRAINING_POD)},
            }
        },
        "pod_spec_config": {
            "node_selector": GPU_NODE_SELECTOR,
            # GPU nodes are usually tainted so that only pods asking for a GPU land there.
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}

CPU_POD = {
    K8S_CONFIG_TAG: {
        "container_config": {
            "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
        }
    }
}
