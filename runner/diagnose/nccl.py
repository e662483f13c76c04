"""Which transport NCCL chose between ranks, read from its NCCL_DEBUG=INFO lines in vLLM's
log: after a multi-node start, did the cross-node traffic go over InfiniBand/RoCE or fall
back to TCP sockets? A pure function of the log text.
"""

from __future__ import annotations

import re
from typing import Any, Dict

# "host:pid:tid [rank] NCCL INFO Channel 00/0 : 0[0] -> 8[0] [send] via NET/IB/0/GDRDMA"
# (NCCL 2.x with NCCL_DEBUG=INFO; older releases print "Channel 00 :" and a bus id in [].)

_CHANNEL = re.compile(
    r"(?:(?P<host>[\w.-]+):\d+:\d+\s+\[\d+\]\s+)?NCCL INFO\s+Channel\s+\d+(?:/\d+)?\s*:\s*"
    r"(?P<src>\d+)\[\w+\]\s*->\s*(?P<dst>\d+)\[\w+\](?:\s*\[(?:send|receive)\])?\s+via\s+(?P<via>\S+)"
)
_NETWORK = re.compile(r"NCCL INFO Using network (\S+)")
_NET_USING = re.compile(r"NCCL INFO NET/(\w+)\s*:\s*Using\s+(.+)")
_HOST = re.compile(r"(?:^|\s)(?P<host>[\w.-]+):\d+:\d+\s+\[\d+\]\s+NCCL INFO", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its worker prefixes


def _kind(via: str) -> str:
    """'NET/IB/0/GDRDMA' -> 'NET/IB'; 'P2P/CUMEM/read' -> 'P2P'; 'SHM/direct/direct' -> 'SHM'."""
    parts = via.split("/")
    return "/".join(parts[:2]) if parts[0] in ("NET", "COLLNET") and len(parts) > 1 else parts[0]


def nccl_transport(log_text: str) -> Dict[str, Any]:
    """Which transports NCCL's channels used, read from its NCCL_DEBUG=INFO lines.

    Returns {"connections": n, "kinds": {"P2P": n, "NET/IB": n, …}, "links": {"P2P/IPC": n,
    …}, "cross_node": any NET connection, "network": "IB" | "Socket" | None, "interfaces":
    […], "gdr": GPUDirect RDMA seen, "hosts": […], "warning": text or None}. NCCL uses NET
    only between nodes (unless P2P and SHM are switched off), so NET/Socket there means the
    cross-node traffic went over TCP, not InfiniBand/RoCE.
    """
    log_text = _ANSI.sub("", log_text)
    kinds: Dict[str, int] = {}
    links: Dict[str, int] = {}
    seen = set()
    for m in _CHANNEL.finditer(log_text):
        via = m.group("via")
        key = (m.group("host"), m.group(0).split("NCCL INFO", 1)[1])
        if key in seen:  # the same line repeated (a log read twice, a tee)
            continue
        seen.add(key)
        kinds[_kind(via)] = kinds.get(_kind(via), 0) + 1
        links[via] = links.get(via, 0) + 1
    networks = _NETWORK.findall(log_text)
    # "NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/RoCE ; OOB ib0:10.0.0.1<0>" -> mlx5_0:1/IB, mlx5_1:1/RoCE
    interfaces = sorted(
        {re.sub(r"^\[\d+\]", "", i) for _, used in _NET_USING.findall(log_text) for i in used.split(";")[0].split()}
    )
    socket_links = sum(n for k, n in kinds.items() if k == "NET/Socket")
    warning = None
    if socket_links:
        warning = (
            f"{socket_links} cross-node connection(s) went over NET/Socket (TCP), not InfiniBand/RoCE: check "
            "NCCL_IB_DISABLE (must not be 1), NCCL_IB_HCA, that the IB devices are visible in the container "
            "(ibv_devinfo), and NCCL_SOCKET_IFNAME"
        )
    return {
        "connections": sum(kinds.values()),
        "kinds": dict(sorted(kinds.items())),
        "links": dict(sorted(links.items())),
        "cross_node": any(k.startswith(("NET/", "COLLNET/")) for k in kinds),
        "network": networks[-1] if networks else None,
        "interfaces": interfaces,
        "gdr": any("GDRDMA" in v for v in links),
        "hosts": sorted(set(_HOST.findall(log_text))),
        "warning": warning,
    }
