"""Topology parsing and GPU placement, on published nvidia-smi captures (see fixtures/topology/SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.plan.topology import (
    P2P_FAILED_RANK,
    PlacementError,
    choose_gpus,
    group_interconnect,
    is_nvlink,
    link_rank,
    p2p_failed_pairs,
    parse_cpu_list,
    parse_p2p_matrix,
    parse_topo_matrix,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "topology"
GIB = 2**30


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.fixture(scope="module")
def h100x4():
    return parse_topo_matrix(fixture("h100x4_topo_m.txt"))


@pytest.fixture(scope="module")
def dgx1():
    return parse_topo_matrix(fixture("dgx1_v100_topo_m.txt"))


@pytest.fixture(scope="module")
def dgx_a100():
    return parse_topo_matrix(fixture("dgx_a100_nics_topo_m.txt"))


@pytest.fixture(scope="module")
def pcie8():
    return parse_topo_matrix(fixture("pcie8_2socket_topo_m.txt"))


@pytest.fixture(scope="module")
def rtx4090x8():
    return parse_topo_matrix(fixture("rtx4090x8_topo_m.txt"))


@pytest.fixture(scope="module")
def workstation5():
    return parse_topo_matrix(fixture("workstation5_spaces_topo_m.txt"))


def all_pairs(count):
    return [(i, j) for i in range(count) for j in range(count) if i != j]


# --------------------------------------------------------------------------- link ranks


def test_link_rank_orders_nvlink_bonds_above_every_pcie_level():
    order = ["NV18", "NV12", "NV2", "NV1", "PIX", "PXB", "PHB", "NODE", "SYS"]
    ranks = [link_rank(link) for link in order]
    assert ranks == sorted(ranks, reverse=True)
    assert len(set(ranks)) == len(ranks)
    assert link_rank("SYS") > P2P_FAILED_RANK


def test_link_rank_accepts_old_soc_name_and_rejects_unknowns():
    assert link_rank("SOC") == link_rank("SYS")
    assert link_rank(" nv4 ") == link_rank("NV4")
    for bad in ("X", "OK", "NV", "PCIe", ""):
        with pytest.raises(ValueError):
            link_rank(bad)


def test_is_nvlink():
    assert is_nvlink("NV18") and is_nvlink("NV1")
    assert not is_nvlink("PIX") and not is_nvlink("X") and not is_nvlink("NVX")


def test_parse_cpu_list():
    assert parse_cpu_list("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert parse_cpu_list("N/A") is None
    assert parse_cpu_list("") is None
    assert parse_cpu_list("5-2") is None


# --------------------------------------------------------------------------- parsing captures


def test_h100x4_real_capture_with_ansi_escapes(h100x4):
    assert "\x1b[4m" in fixture("h100x4_topo_m.txt")  # the escapes really are in the fixture
    assert h100x4.gpu_count == 4
    assert all(h100x4.link(i, j) == "NV18" for i, j in all_pairs(4))
    assert h100x4.link(2, 2) == "X"
    assert h100x4.cpu_affinity(0) == tuple(range(64))
    assert h100x4.numa_nodes == (0, 0, 0, 0)
    assert h100x4.gpu_numa_ids == (None,) * 4  # "N/A" after nvidia-smi's extra empty cell
    assert h100x4.nics == ()


def test_h100x4_p2p_capture_is_all_ok():
    p2p = parse_p2p_matrix(fixture("h100x4_p2p_r.txt"))
    assert len(p2p) == 12
    assert set(p2p.values()) == {"OK"}
    assert (0, 0) not in p2p


def test_dgx1_hybrid_cube_mesh(dgx1):
    assert dgx1.gpu_count == 8
    assert dgx1.link(0, 3) == "NV2"
    assert dgx1.link(0, 1) == "NV1"
    assert dgx1.link(0, 4) == "NV2"
    assert dgx1.link(0, 5) == "SYS"
    assert dgx1.link(7, 3) == "NV1"
    assert all(dgx1.link(i, j) == dgx1.link(j, i) for i, j in all_pairs(8))
    # Old captures name HCAs by device; their rows and columns never leak into GPU links.
    assert dgx1.nics == ("mlx5_0", "mlx5_2", "mlx5_1", "mlx5_3")
    assert all(link == "X" or is_nvlink(link) or link == "SYS" for row in dgx1.links for link in row)
    assert dgx1.cpu_affinity(4) == tuple(range(20, 40)) + tuple(range(60, 80))
    assert dgx1.numa_nodes == (None,) * 8  # no NUMA column in this driver's output


def test_dgx_a100_nic_rows_and_legend(dgx_a100):
    assert dgx_a100.gpu_count == 8
    assert all(dgx_a100.link(i, j) == "NV12" for i, j in all_pairs(8))
    assert dgx_a100.nics == tuple(f"NIC{i}" for i in range(10))
    assert dgx_a100.nic_legend["NIC0"] == "mlx5_0"
    assert dgx_a100.nic_legend["NIC9"] == "mlx5_9"
    assert dgx_a100.numa_nodes == (3, 3, 1, 1, 7, 7, 5, 5)
    assert dgx_a100.cpu_affinity(4) == tuple(range(112, 128)) + tuple(range(240, 256))


def test_pcie8_two_socket_server(pcie8):
    assert pcie8.gpu_count == 8
    assert pcie8.link(0, 1) == "PIX"
    assert pcie8.link(0, 2) == "PXB"
    assert pcie8.link(6, 7) == "PIX"
    assert pcie8.link(3, 4) == "SYS"
    assert not any(is_nvlink(link) for row in pcie8.links for link in row)
    assert pcie8.nics == ("mlx5_0",)
    assert pcie8.cpu_affinity(7) == tuple(range(14, 28))


def test_rtx4090x8_nic_rows_without_affinity_cells(rtx4090x8):
    assert rtx4090x8.gpu_count == 8
    assert {rtx4090x8.link(i, j) for i, j in all_pairs(8)} == {"SYS"}
    assert rtx4090x8.nics == ("NIC0", "NIC1")
    assert rtx4090x8.numa_nodes == (0, 0, 0, 0, 1, 1, 1, 1)
    assert rtx4090x8.cpu_affinity(5)[:2] == (56, 57)


def test_space_aligned_copy_parses_like_tabs(workstation5):
    assert workstation5.gpu_count == 5
    assert workstation5.link(1, 2) == "PHB"
    assert workstation5.link(1, 3) == "NODE"
    assert workstation5.link(0, 4) == "SYS"
    assert workstation5.numa_nodes == (1, 0, 0, 0, 0)
    assert workstation5.cpu_affinity(0) == tuple(range(8, 16)) + tuple(range(24, 32))


def test_rtx5090x2_p2p_capture_with_gns():
    matrix = parse_topo_matrix(fixture("rtx5090x2_topo_m.txt"))
    p2p = parse_p2p_matrix(fixture("rtx5090x2_p2p_rw.txt"))
    assert matrix.link(0, 1) == "PHB"
    assert p2p == {(0, 1): "GNS", (1, 0): "GNS"}


def test_soc_cells_from_old_drivers_read_as_sys():
    # Synthetic: the pre-2017 spelling, which the K80-era legend calls SOC.
    text = "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tSOC\t0-11\nGPU1\tSOC\t X \t12-23\n"
    matrix = parse_topo_matrix(text)
    assert matrix.link(0, 1) == "SYS"
    assert matrix.cpu_affinity(1) == tuple(range(12, 24))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\x1b[4mhello\x1b[0m\nworld\n",
        "No devices were found\n",
        "Legend:\n\n  X    = Self\n",
    ],
)
def test_text_that_is_not_a_matrix_raises(text):
    with pytest.raises(ValueError, match="not an nvidia-smi topo -m matrix"):
        parse_topo_matrix(text)


def test_p2p_text_given_to_topo_parser_says_so():
    with pytest.raises(ValueError, match="topo -p2p"):
        parse_topo_matrix(fixture("h100x4_p2p_r.txt"))


def test_topo_text_given_to_p2p_parser_raises():
    with pytest.raises(ValueError, match="P2P status .NV18. between GPU0 and GPU1; this looks like a topo -m matrix"):
        parse_p2p_matrix(fixture("h100x4_topo_m.txt"))


def test_unknown_link_and_short_row_raise():
    with pytest.raises(ValueError, match="unknown link 'FOO' between GPU0 and GPU1"):
        parse_topo_matrix("\tGPU0\tGPU1\nGPU0\t X \tFOO\nGPU1\tPIX\t X \n")
    with pytest.raises(ValueError, match="row GPU1 has 1 cells"):
        parse_topo_matrix("\tGPU0\tGPU1\nGPU0\t X \tPIX\nGPU1\tPIX\n")
    with pytest.raises(ValueError, match="no row for GPU1"):
        parse_topo_matrix("\tGPU0\tGPU1\nGPU0\t X \tPIX\n")
    with pytest.raises(ValueError, match="diagonal"):
        parse_topo_matrix("\tGPU0\tGPU1\nGPU0\tPIX\tPIX\nGPU1\tPIX\t X \n")


# --------------------------------------------------------------------------- placement


def test_dgx1_four_of_eight_is_a_fully_nvlinked_quad(dgx1):
    placement = choose_gpus(dgx1, 4)
    assert placement.devices == (0, 1, 2, 3)
    assert placement.interconnect == "nvlink"
    assert placement.worst_link == "NV1"
    assert "NVLink" in placement.reason


def test_dgx1_pair_prefers_double_nvlink(dgx1):
    placement = choose_gpus(dgx1, 2)
    assert placement.devices == (0, 3)
    assert placement.worst_link == "NV2"
    assert placement.reason == "GPUs 0,3: every pair linked by NV2"


def test_dgx1_mask_without_gpu0_moves_to_the_other_quad(dgx1):
    placement = choose_gpus(dgx1, 4, candidates=[7, 6, 5, 4, 3, 2, 1])
    assert placement.devices == (4, 5, 6, 7)
    assert placement.interconnect == "nvlink"
    assert placement.skipped == {}


def test_dgx1_all_eight_is_not_all_nvlink(dgx1):
    placement = choose_gpus(dgx1, 8)
    assert placement.devices == tuple(range(8))
    assert placement.worst_link == "SYS"
    assert placement.interconnect == "pcie"
    assert group_interconnect(dgx1, (0, 1, 2, 3)) == "nvlink"
    assert group_interconnect(dgx1, (0, 5)) == "pcie"


def test_pcie8_pair_is_on_one_switch(pcie8):
    placement = choose_gpus(pcie8, 2)
    assert pcie8.link(*placement.devices) == "PIX"
    assert placement.devices == (0, 1)
    assert placement.reason == "GPUs 0,1: same PCIe switch (PIX)"


def test_pcie8_four_stay_on_one_numa_node(pcie8):
    placement = choose_gpus(pcie8, 4)
    assert placement.devices == (0, 1, 2, 3)
    assert placement.worst_link == "PXB"
    assert placement.same_numa
    assert placement.interconnect == "pcie"


def test_busy_gpu_is_skipped_and_named_in_reason(pcie8):
    free = {i: 40 * GIB for i in range(8)}
    free[0] = int(3.1 * GIB)
    placement = choose_gpus(pcie8, 2, free_bytes=free, min_free_bytes=40 * GIB)
    assert placement.devices == (2, 3)
    assert placement.skipped == {0: "3.1 GiB free, below 40.0 GiB"}
    assert placement.reason == "GPUs 2,3: same PCIe switch (PIX); GPU 0 skipped: 3.1 GiB free, below 40.0 GiB"


def test_busy_gpu_pushes_a_quad_to_the_other_socket(pcie8):
    free = {i: 80 * GIB for i in range(8)}
    free[0] = 1 * GIB
    placement = choose_gpus(pcie8, 4, free_bytes=free, min_free_bytes=20 * GIB)
    assert placement.devices == (4, 5, 6, 7)
    assert placement.worst_link == "PXB"


def test_more_free_memory_breaks_a_link_tie(h100x4):
    free = {0: 10 * GIB, 1: 70 * GIB, 2: 20 * GIB, 3: 75 * GIB}
    assert choose_gpus(h100x4, 2, free_bytes=free).devices == (1, 3)


def test_same_numa_breaks_a_tie_between_sys_pairs(rtx4090x8):
    # Every pair reads SYS here; GPUs 4 and 5 share a socket, 3 and 4 do not.
    placement = choose_gpus(rtx4090x8, 2, candidates=[3, 4, 5])
    assert placement.devices == (4, 5)
    assert placement.same_numa
    assert "one NUMA node" in placement.reason


def test_user_mask_is_honoured_even_when_worse(h100x4):
    placement = choose_gpus(h100x4, 2, candidates=[3, 1])
    assert placement.devices == (1, 3)


def test_mask_naming_a_missing_gpu_raises(h100x4):
    with pytest.raises(ValueError, match="GPU 9 is in the device mask"):
        choose_gpus(h100x4, 1, candidates=[9])


def test_p2p_failure_counts_as_worst_link(h100x4):
    # Synthetic P2P matrix: the capture is all OK, so GPU0<->GPU1 is marked NS by hand.
    p2p = {(i, j): "OK" for i, j in all_pairs(4)}
    p2p[(0, 1)] = "NS"
    pair = choose_gpus(h100x4, 2, p2p=p2p)
    assert pair.devices == (0, 2)
    quad = choose_gpus(h100x4, 4, p2p=p2p)
    assert quad.devices == (0, 1, 2, 3)
    assert "P2P NS (not supported) between GPUs 0 and 1" in quad.reason
    assert p2p_failed_pairs(p2p, quad.devices) == [(0, 1)]
    assert p2p_failed_pairs(p2p, (2, 3)) == []


def test_p2p_failure_ranks_below_a_sys_pair():
    # Synthetic: GPUs 0,1 share a switch but report CNS; 2,3 only meet across sockets.
    matrix = parse_topo_matrix(
        "\tGPU0\tGPU1\tGPU2\tGPU3\n"
        "GPU0\t X \tPIX\tSYS\tSYS\n"
        "GPU1\tPIX\t X \tSYS\tSYS\n"
        "GPU2\tSYS\tSYS\t X \tSYS\n"
        "GPU3\tSYS\tSYS\tSYS\t X \n"
    )
    p2p = {(0, 1): "CNS", (1, 0): "CNS"}
    assert choose_gpus(matrix, 2, p2p=p2p).devices == (0, 2)
    assert choose_gpus(matrix, 2).devices == (0, 1)


def test_real_gns_capture_is_reported():
    matrix = parse_topo_matrix(fixture("rtx5090x2_topo_m.txt"))
    p2p = parse_p2p_matrix(fixture("rtx5090x2_p2p_rw.txt"))
    placement = choose_gpus(matrix, 2, p2p=p2p)
    assert placement.devices == (0, 1)
    assert placement.worst_link == "PHB"
    assert "P2P GNS (GPU not supported) between GPUs 0 and 1" in placement.reason
    assert p2p_failed_pairs(p2p, (1, 0)) == [(0, 1)]


def test_placement_error_says_how_many_are_usable_and_why(h100x4):
    free = {0: int(3.1 * GIB), 1: 80 * GIB, 2: 2 * GIB, 3: 80 * GIB}
    with pytest.raises(PlacementError) as raised:
        choose_gpus(h100x4, 4, free_bytes=free, min_free_bytes=40 * GIB)
    message = str(raised.value)
    assert "need 4 GPUs" in message
    assert "only 2 of 4 are usable (1,3)" in message
    assert "GPU 0 skipped: 3.1 GiB free, below 40.0 GiB" in message
    assert "GPU 2 skipped: 2.0 GiB free, below 40.0 GiB" in message
    assert isinstance(raised.value, ValueError)


def test_placement_error_for_a_mask_that_is_too_small(dgx_a100):
    with pytest.raises(PlacementError, match=r"only 2 of the visible GPUs 4,5 are usable"):
        choose_gpus(dgx_a100, 4, candidates=[4, 5])


def test_single_gpu_takes_the_most_free_memory(h100x4):
    free = {0: 10 * GIB, 1: 60 * GIB, 2: 60 * GIB, 3: 5 * GIB}
    placement = choose_gpus(h100x4, 1, free_bytes=free)
    assert placement.devices == (1,)
    assert placement.interconnect == "none"
    assert placement.reason == "GPU 1: most free memory (60.0 GiB)"
    assert choose_gpus(h100x4, 1).devices == (0,)


def test_group_size_must_be_positive(h100x4):
    with pytest.raises(ValueError):
        choose_gpus(h100x4, 0)
