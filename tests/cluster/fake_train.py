"""CPU stand-in for a training job (tests/cluster): one Ray task per node-sized GPU bundle of a
STRICT_SPREAD placement group, each reporting where it ran and which GPUs Ray gave it."""

import json
import socket
import sys

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

nodes, gpus, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ray.init()
pg = placement_group([{"GPU": gpus, "CPU": 1}] * nodes, strategy="STRICT_SPREAD")
ray.get(pg.ready(), timeout=120)


@ray.remote(num_gpus=gpus, num_cpus=1)
def where():
    return {"host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "gpus": ray.get_gpu_ids()}


tasks = [where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)).remote()
         for i in range(nodes)]
result = {"tasks": ray.get(tasks, timeout=120), "cluster": ray.cluster_resources()}
with open(out, "w") as f:
    json.dump(result, f)
print(json.dumps(result))
