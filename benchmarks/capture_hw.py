"""Record what a GPU machine says about itself, for the tests' fixtures.

    python3 benchmarks/capture_hw.py OUT.json

Writes the `nvidia-smi` texts the runner parses (topo -m, topo -p2p r/w/n, nvlink -s, -L,
the query CSV), the runner's own NVML probe (runner.probe.hardware.probe_hardware) and torch's P2P
answers, with how long each source took."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's runner, installed or not

from runner.probe.hardware import probe_hardware  # noqa: E402


def smi(*args: str) -> dict:
    start = time.perf_counter()
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60)
        text = out.stdout if out.returncode == 0 else f"rc={out.returncode}: {out.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        text = f"failed: {exc}"
    return {"text": text, "seconds": round(time.perf_counter() - start, 3)}


def main(path: str) -> None:
    capture = {}
    for key, args in {
        "nvidia_smi_topo_m": ("topo", "-m"),
        "nvidia_smi_topo_p2p_r": ("topo", "-p2p", "r"),
        "nvidia_smi_topo_p2p_w": ("topo", "-p2p", "w"),
        "nvidia_smi_topo_p2p_n": ("topo", "-p2p", "n"),
        "nvidia_smi_nvlink_s": ("nvlink", "-s"),
        "nvidia_smi_L": ("-L",),
        "nvidia_smi_query": (
            "--query-gpu=index,name,pci.bus_id,memory.total,memory.used,driver_version,compute_cap",
            "--format=csv",
        ),
    }.items():
        capture[key] = smi(*args)
    start = time.perf_counter()
    probe = probe_hardware(with_topology=False)
    capture["runner_probe"] = {
        "seconds": round(time.perf_counter() - start, 3),
        "gpus": [dataclasses.asdict(g) for g in probe.gpus],
        "links": {f"{a}-{b}": v for (a, b), v in probe.links.items()},
        "p2p": {f"{a}-{b}": v for (a, b), v in probe.p2p.items()},
        "numa_nodes": probe.numa_nodes,
        "driver": probe.driver_version,
        "cuda_driver": probe.cuda_driver_version,
    }
    try:
        import torch

        n = torch.cuda.device_count()
        capture["torch"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())),
            "count": n,
            "p2p": {f"{i}-{j}": torch.cuda.can_device_access_peer(i, j) for i in range(n) for j in range(n) if i != j},
            # cudaMemGetInfo's (free, total): vLLM's "total" is this, a little under NVML's.
            "mem_get_info": [list(torch.cuda.mem_get_info(i)) for i in range(n)],
        }
    except Exception as exc:  # no torch / no CUDA: the capture is still useful
        capture["torch"] = {"error": repr(exc)}
    Path(path).write_text(json.dumps(capture, indent=1))
    print(json.dumps({k: v.get("seconds") for k, v in capture.items() if isinstance(v, dict)}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the JSON file to write")
    main(ap.parse_args().out)
