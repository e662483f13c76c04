"""Which GPUs the plan gives a TP group, and the environment it sets for them, driven by real
topology captures: the H100 x4 device machine (NVML, as the probe read it there) and
published `nvidia-smi topo -m` / `topo -p2p r` outputs (tests/fixtures/topology/SOURCES.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

import pytest
from omegaconf import OmegaConf

from runner.plan.build import make_plan
from runner.plan.topology import parse_p2p_matrix, strip_ansi
from runner.probe.hardware import Gpu, HardwareProbe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOPO = FIXTURES / "topology"
CAPTURE = json.loads((FIXTURES / "h100x4-capture-2.json").read_text())
GIB = 2**30


def probe_from_nvml_capture(free_gib: Optional[Sequence[float]] = None, mask: Optional[str] = None) -> HardwareProbe:
    """The probe as runner.probe built it on the H100 x4 (benchmarks/capture_hw.py's runner_probe)."""
    seen = CAPTURE["runner_probe"]
    gpus = []
    for g in seen["gpus"]:
        free = int(free_gib[g["index"]] * GIB) if free_gib else g["memory_free_bytes"]
        gpus.append(Gpu(**{**g, "compute_capability": tuple(g["compute_capability"]), "memory_free_bytes": free}))
    pairs = lambda d: {tuple(int(x) for x in k.split("-")): v for k, v in d.items()}  # noqa: E731
    return HardwareProbe(
        gpus=tuple(gpus),
        cpus_allowed=tuple(range(64)),
        source="nvml",
        links=pairs(seen["links"]),
        p2p=pairs(seen["p2p"]),
        inherited_cuda_mask=mask,
        driver_version=seen["driver"],
    )


def probe_from_topo(name: str, gpu_name: str, total_gib: float, cc=(8, 9), p2p: Optional[str] = None) -> HardwareProbe:
    """A machine seen only through nvidia-smi (no NVML pairs): the topology text is parsed."""
    text = (TOPO / f"{name}_topo_m.txt").read_text()
    count = len(re.findall(r"\bGPU\d+\b", strip_ansi(text).splitlines()[0]))
    gpus = tuple(
        Gpu(
            index=i,
            name=gpu_name,
            pci_bus_id=f"00000000:{i + 1:02x}:00.0",
            memory_total_bytes=int(total_gib * GIB),
            memory_free_bytes=int(total_gib * GIB) - 300 * 2**20,
            compute_capability=cc,
        )
        for i in range(count)
    )
    return HardwareProbe(
        gpus=gpus,
        cpus_allowed=tuple(range(64)),
        source="nvidia-smi",
        topology_matrix=text,
        p2p=parse_p2p_matrix((TOPO / p2p).read_text()) if p2p else {},
    )


@pytest.fixture
def plan(compose):
    def _plan(overrides, probe, env=None):
        cfg = OmegaConf.to_object(
            compose(["cache_dir=/nonexistent", "model.load_format=dummy", "mode=check", *overrides])
        )
        return make_plan(cfg, probe, dict(cfg.model.hf_config), "0.26.0", dict(env or {}))

    return _plan


def test_h100x4_nvml_pairs_place_tp2_on_the_first_nvlinked_pair(plan):
    p = plan(["hw=auto", "model=llama3-8b", "serve.tensor_parallel_size=2"], probe_from_nvml_capture())
    assert p.ok and p.devices == (0, 1) and p.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert p.placement["interconnect"] == "nvlink" and p.placement["links"] == {"0-1": "NV18"}
    assert "every pair linked by NV18" in p.placement["reason"]
    assert "NCCL_P2P_DISABLE" not in p.env  # P2P read OK on every pair


def test_a_busy_gpu_is_skipped(plan):
    # What the device machine did: 60 GiB held on GPU 0, so TP 2 went to GPUs 1 and 2.
    p = plan(
        ["hw=auto", "model=llama3-8b", "serve.tensor_parallel_size=2"],
        probe_from_nvml_capture(free_gib=[18.7, 79.2, 79.2, 79.2]),
    )
    assert p.ok and p.devices == (1, 2)
    assert p.placement["skipped"] == {"0": "18.7 GiB free, below 72.8 GiB"}
    # with every GPU too busy the plan does not pretend: lowering the utilization is the fix
    busy = plan(
        ["hw=auto", "model=llama3-8b", "serve.tensor_parallel_size=2"], probe_from_nvml_capture(free_gib=[18.7] * 4)
    )
    assert [q.key for q in busy.problems] == ["serve.gpu_memory_utilization"]


def test_the_user_mask_is_honoured_in_pci_order(plan):
    p = plan(["hw=auto", "model=llama3-8b", "serve.tensor_parallel_size=2"], probe_from_nvml_capture(mask="3,2"))
    assert p.ok and p.devices == (2, 3) and p.env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_a_declared_profile_bigger_than_the_mask_still_places_inside_it(plan):
    p = plan(["hw=nvlink-2gpu", "model=llama3-8b", "serve.tensor_parallel_size=2"], probe_from_nvml_capture(mask="1,3"))
    assert p.ok and p.devices == (1, 3)


def test_dgx1_picks_a_fully_nvlinked_quad(plan):
    probe = probe_from_topo("dgx1_v100", "Tesla V100-SXM2-32GB", 31.75, cc=(7, 0))
    p = plan(["hw=auto", "model=llama3-8b", "serve.tensor_parallel_size=4", "serve.dtype=float16"], probe)
    assert p.ok, [str(q) for q in p.problems]
    assert p.placement["interconnect"] == "nvlink" and all(v.startswith("NV") for v in p.placement["links"].values())
    assert len(p.devices) == 4 and p.devices in ((0, 1, 2, 3), (4, 5, 6, 7))


def test_pcie_server_pairs_on_one_switch_and_quads_on_one_socket(plan):
    probe = probe_from_topo("pcie8_2socket", "NVIDIA L40S", 44.99)
    two = plan(["hw=auto", "model=llama3-8b", "serve.tensor_parallel_size=2"], probe)
    assert two.ok and two.placement["worst_link"] == "PIX" and two.devices == (0, 1)
    four = plan(["hw=auto", "model=llama3-8b", "serve.tensor_parallel_size=4"], probe)
    assert four.ok and four.placement["same_numa"] and four.devices == (0, 1, 2, 3)
    # PCIe, more than two GPUs: vLLM's custom all-reduce would be skipped with a warning
    assert "--disable-custom-all-reduce" in four.argv
    assert any("custom all-reduce off" in n for n in four.notes)
    assert "--disable-custom-all-reduce" not in two.argv


def test_failing_p2p_gets_the_nccl_fallback_and_a_nvlink_profile_is_refused(plan):
    probe = probe_from_topo("rtx5090x2", "NVIDIA GeForce RTX 5090", 31.36, cc=(12, 0), p2p="rtx5090x2_p2p_rw.txt")
    auto = plan(["hw=auto", "model=qwen2.5-7b", "serve.tensor_parallel_size=2", "serve.max_model_len=4096"], probe)
    assert auto.ok, [str(q) for q in auto.problems]
    assert auto.env["NCCL_P2P_DISABLE"] == "1" and any("P2P GNS between GPUs 0 and 1" in n for n in auto.notes)
    # 32 GB cards at utilization 0.92 leave little head-room: a warning (the margin was measured on 80 GB cards)
    assert any(n.startswith("WARNING: only") and "serve.gpu_memory_utilization=0.9" in n for n in auto.notes)
    # the user's own setting wins
    kept = plan(
        ["hw=auto", "model=qwen2.5-7b", "serve.tensor_parallel_size=2", "serve.max_model_len=4096"],
        probe,
        env={"NCCL_P2P_DISABLE": "0"},
    )
    assert "NCCL_P2P_DISABLE" not in kept.env
    declared = plan(
        ["hw=nvlink-2gpu", "model=qwen2.5-7b", "serve.tensor_parallel_size=2", "serve.max_model_len=4096"], probe
    )
    [problem] = [q for q in declared.problems if q.key == "hw"]
    assert "the profile says NVLink" in problem.message and "PHB" in problem.message
    assert problem.fix == "hw=auto, or hw=pcie-2gpu"


def test_nvlink_4gpu_profile_on_two_pcie_gpus_names_both_fixes(plan):
    probe = probe_from_topo("rtx5090x2", "NVIDIA GeForce RTX 5090", 31.36, cc=(12, 0))
    p = plan(["hw=nvlink-4gpu", "model=qwen2.5-7b", "serve.tensor_parallel_size=2", "serve.max_model_len=4096"], probe)
    assert {q.key for q in p.problems} == {"hw"}
    assert any("declares 4 GPUs but 2 are visible" in q.message for q in p.problems)
    assert any(q.fix == "hw=auto, or hw=pcie-2gpu" for q in p.problems)


def test_cpu_ranks_are_bound_one_numa_node_each(plan):
    # Two NUMA nodes whose CPUs interleave (node 0: even, node 1: odd), as many servers number them.
    probe = HardwareProbe(cpus_allowed=tuple(range(8)), cpu_numa_nodes=((0, 2, 4, 6), (1, 3, 5, 7)), numa_nodes=2)
    p = plan(["hw=auto", "model=tiny-llama", "serve.tensor_parallel_size=2"], probe)
    assert p.device == "cpu" and p.env["VLLM_CPU_OMP_THREADS_BIND"] == "0,2,4,6|1,3,5,7"
    # one node: plain contiguous blocks
    flat = plan(
        ["hw=auto", "model=tiny-llama", "serve.tensor_parallel_size=2"], HardwareProbe(cpus_allowed=tuple(range(8)))
    )
    assert flat.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3|4-7"


def test_h100x2_capture_parses_and_places_the_pair(plan):
    # The nvidia-h100-x2 device machine's matrix, as the runner stored it in a manifest.
    probe = probe_from_topo("h100x2", "NVIDIA H100 80GB HBM3", 79.65, cc=(9, 0))
    p = plan(["hw=auto", "model=llama70b", "serve.tensor_parallel_size=2"], probe)
    assert p.ok and p.devices == (0, 1) and p.placement["links"] == {"0-1": "NV18"}
    assert p.placement["same_numa"] is True  # "NUMA Affinity 0" for both in the matrix


def nvswitch8_probe(free_gib: Optional[Sequence[float]] = None) -> HardwareProbe:
    """The shape of an 8-GPU H100 NVSwitch board on two sockets (HGX/DGX H100 class): every pair
    NV18 with P2P, GPUs 0-3 on NUMA node 0 and 4-7 on node 1. Built, not captured: the runs on
    such a machine are still to be made (docs/validation.md)."""
    total = 85_520_809_984  # an H100 80GB HBM3 as NVML reports it (the H100 x4 capture)
    gpus = tuple(
        Gpu(
            index=i,
            name="NVIDIA H100 80GB HBM3",
            pci_bus_id=f"00000000:{0x18 + 0x10 * i:02x}:00.0",
            memory_total_bytes=total,
            memory_free_bytes=int(free_gib[i] * GIB) if free_gib else total - 500 * 2**20,
            compute_capability=(9, 0),
            numa_node=0 if i < 4 else 1,
            nvlinks_active=18,
        )
        for i in range(8)
    )
    pairs = [(a, b) for a in range(8) for b in range(a + 1, 8)]
    return HardwareProbe(
        gpus=gpus,
        cpus_allowed=tuple(range(224)),
        source="nvml",
        links={p: "NV18" for p in pairs},
        p2p={p: "OK" for p in pairs},
        numa_nodes=2,
        cpu_numa_nodes=(tuple(range(0, 112)), tuple(range(112, 224))),
    )


@pytest.mark.parametrize("hw", ["hw=auto", "hw=nvlink-8gpu"])
def test_eight_nvswitch_gpus_give_tp4_one_socket_and_tp8_all(plan, hw):
    probe = nvswitch8_probe()
    four = plan([hw, "model=llama70b", "serve.tensor_parallel_size=4"], probe)
    assert four.ok, [str(q) for q in four.problems]
    assert four.devices == (0, 1, 2, 3) and four.placement["same_numa"]
    assert four.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    eight = plan([hw, "model=llama70b", "serve.tensor_parallel_size=8"], probe)
    assert eight.ok and eight.devices == tuple(range(8)) and eight.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    # 28 query heads do not split 8 ways: refused before anything starts, with the sizes that do
    qwen = plan([hw, "model=qwen2.5-7b", "serve.tensor_parallel_size=8"], probe)
    assert [q.key for q in qwen.problems] == ["serve.tensor_parallel_size"] and "4" in qwen.problems[0].fix


def test_eight_nvswitch_gpus_with_one_busy_keep_tp4_on_the_other_socket(plan):
    # GPU 2 held by someone else: the free quad is 4-7, all on one NUMA node, rather than 0,1,3,4
    # (as well linked, but across the sockets)
    p = plan(
        ["hw=auto", "model=llama70b", "serve.tensor_parallel_size=4"],
        nvswitch8_probe(free_gib=[79.2, 79.2, 10.0] + [79.2] * 5),
    )
    assert p.ok and p.devices == (4, 5, 6, 7) and p.placement["same_numa"]
    assert p.placement["skipped"] == {"2": "10.0 GiB free, below 72.8 GiB"}


def test_tp_larger_than_the_machine_is_one_count_problem_not_a_busy_gpu_one(plan):
    # What the H100 x4 printed for TP 8 before this was fixed: the count problem, and a second
    # "need 8 GPUs … only 4 usable. Fix: free those GPUs … or gpu_memory_utilization=<lower>"
    # for four idle cards. One problem, whose fix is a TP size that fits.
    p = plan(["hw=auto", "model=llama70b", "serve.tensor_parallel_size=8"], probe_from_nvml_capture())
    assert [(q.key, q.message) for q in p.problems] == [
        ("serve.tensor_parallel_size", "TP 8 x PP 1 needs 8 GPUs, 4 available")
    ]
    assert p.problems[0].fix == "serve.tensor_parallel_size=2 or 4"
    # a busy card among too few still gets named: two of four usable, and why
    busy = plan(
        ["hw=auto", "model=llama70b", "serve.tensor_parallel_size=8"],
        probe_from_nvml_capture(free_gib=[18.7, 18.7, 79.2, 79.2]),
    )
    assert len(busy.problems) == 2 and "only 2 of the visible GPUs 0,1,2,3 are usable (2,3)" in busy.problems[1].message
    assert (
        "GPU 0 skipped: 18.7 GiB free" in busy.problems[1].message
        and "serve.tensor_parallel_size=2" in busy.problems[1].fix
    )
