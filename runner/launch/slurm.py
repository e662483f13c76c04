"""One sweep point as a multi-node SLURM job: who starts Ray's head, who joins it.

`-m hydra/launcher=slurm` with `hw.nodes > 1` asks for that many nodes and one task on each,
so the Hydra job (the runner) starts on every node. The first node of the allocation starts
a Ray head and runs the point against it; every other node joins that head as a Ray worker
and stays until the job ends (SLURM then stops it). Everything here is computed from
SLURM's environment; the two `ray start` commands are the only processes it starts.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

RAY_PORT = 6379


@dataclass(frozen=True)
class SlurmRole:
    node_id: int  # SLURM_NODEID: 0 is the head
    nodes: int
    hosts: tuple  # the allocation's hostnames, in SLURM's order
    head: str

    @property
    def is_head(self) -> bool:
        return self.node_id == 0

    @property
    def address(self) -> str:
        return f"{self.head}:{RAY_PORT}"


def expand_nodelist(text: str) -> List[str]:
    """SLURM's compressed host list, "gpu[01-03,07],login1" -> gpu01 gpu02 gpu03 gpu07 login1
    (what `scontrol show hostnames` prints), zero padding kept."""
    hosts: List[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", text):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(prefix + lo)
                continue
            for n in range(int(lo), int(hi) + 1):
                hosts.append(f"{prefix}{n:0{len(lo)}d}")
    return hosts


def role(env: Mapping[str, str]) -> Optional[SlurmRole]:
    """This task's place in a multi-node SLURM job; None outside one (or on a single node)."""
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if nodes < 2 or not nodelist:
        return None
    hosts = tuple(expand_nodelist(nodelist))
    return SlurmRole(node_id=int(env.get("SLURM_NODEID", "0")), nodes=nodes, hosts=hosts, head=hosts[0])


def ray_argv(r: SlurmRole, devices: int, device: str = "cuda") -> List[str]:
    """`ray start` for this node: the head, or a worker that blocks until the job ends."""
    resources = [f"--num-gpus={devices}"] if device == "cuda" else [f"--num-cpus={devices}", "--num-gpus=0"]
    if r.is_head:
        return ["ray", "start", "--head", f"--port={RAY_PORT}", *resources, "--disable-usage-stats"]
    return ["ray", "start", f"--address={r.address}", *resources, "--disable-usage-stats", "--block"]


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    return subprocess.run(list(argv), env=dict(env)).returncode
