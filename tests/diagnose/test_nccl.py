"""runner.diagnose.nccl: which transport NCCL's channels used, read from its NCCL_DEBUG=INFO lines."""

from __future__ import annotations

from runner.diagnose.nccl import nccl_transport

IB_LOG = """\
(RayWorkerWrapper pid=4121, ip=10.0.0.1) gpu-a:4121:4190 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.0.0.1<0>
(RayWorkerWrapper pid=4121, ip=10.0.0.1) gpu-a:4121:4190 [0] NCCL INFO Using network IB
gpu-a:4121:4190 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC
gpu-a:4121:4190 [0] NCCL INFO Channel 01/0 : 0[0] -> 1[1] via P2P/CUMEM/read
\x1b[36m(RayWorkerWrapper pid=5230, ip=10.0.0.2)\x1b[0m gpu-b:5230:5301 [7] NCCL INFO Channel 00/0 : 7[7] -> 8[0] [send] via NET/IB/0/GDRDMA
gpu-b:5230:5301 [7] NCCL INFO Channel 00/0 : 7[7] -> 8[0] [send] via NET/IB/0/GDRDMA
gpu-a:4121:4191 [0] NCCL INFO Channel 00/0 : 15[7] -> 0[0] [receive] via NET/IB/1/GDRDMA
gpu-a:4121:4190 [0] NCCL INFO Connected all rings
"""  # noqa: E501 (NCCL's lines as it prints them)

SOCKET_LOG = """\
node1:811:860 [0] NCCL INFO NET/Socket : Using [0]eth0:192.168.1.10<0>
node1:811:860 [0] NCCL INFO Using network Socket
node1:811:860 [0] NCCL INFO Channel 00 : 0[0] -> 1[1] via SHM/direct/direct
node1:811:861 [1] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [send] via NET/Socket/0
node2:902:950 [0] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [receive] via NET/Socket/0
"""


def test_nccl_transport_over_infiniband():
    found = nccl_transport(IB_LOG)
    assert found["kinds"] == {"NET/IB": 2, "P2P": 2}  # the repeated line counts once
    assert found["links"] == {"NET/IB/0/GDRDMA": 1, "NET/IB/1/GDRDMA": 1, "P2P/CUMEM/read": 1, "P2P/IPC": 1}
    assert found["connections"] == 4
    assert found["cross_node"] and found["gdr"]
    assert found["network"] == "IB"
    assert found["interfaces"] == ["mlx5_0:1/IB", "mlx5_1:1/IB"]
    assert found["hosts"] == ["gpu-a", "gpu-b"]
    assert found["warning"] is None


def test_nccl_transport_warns_when_nodes_talk_over_sockets():
    found = nccl_transport(SOCKET_LOG)
    assert found["kinds"] == {"NET/Socket": 2, "SHM": 1}
    assert found["network"] == "Socket" and found["interfaces"] == ["eth0:192.168.1.10<0>"]
    assert found["cross_node"] and not found["gdr"]
    assert found["warning"].startswith("2 cross-node connection(s) went over NET/Socket (TCP), not InfiniBand/RoCE")
    assert "NCCL_IB_DISABLE" in found["warning"]


def test_nccl_transport_on_a_log_without_nccl_lines():
    found = nccl_transport("INFO 11-27 05:58:39 [api_utils.py:286] non-default args: {}\n")
    assert found == {
        "connections": 0,
        "kinds": {},
        "links": {},
        "cross_node": False,
        "network": None,
        "interfaces": [],
        "gdr": False,
        "hosts": [],
        "warning": None,
    }
