"""ftcp.lab: hosts as network namespaces, segments as bridges or one shared hub.

Hosts: `client`, `server`, `logger`, `backup`, each the namespace
`ftcp-<name>-<host>`; bridges (and the hub) live in `ftcp-<name>-sw`. Nothing
is created in the root namespace. Lab names are 1-8 lowercase letters/digits.

Segments and addresses, derived from a hash of the lab name: a /23 inside
198.18.0.0/15 (RFC 2544), its first /24 for `front`, its second for `back`
(labs are isolated from each other, so two names sharing a /23 is harmless):

    front  A.B.C.0/24     client .1   server .2   backup .4
    back   A.B.C+1.0/24   server .2   logger .3   backup .4

Interface of host H on segment S inside H's namespace: `<name>-<h><s>`
(e.g. `lab-cf` is the client's front interface, `lab-sb` the server's back).

Reachability matrix (source host -> destination address; hosts have only
their connected /24 routes, no default route, and never forward):

    source \\ dest   client.front server.front backup.front server.back backup.back logger.back
    client              -          yes          yes          no          no          no
    server             yes          -           yes           -          yes         yes
    backup             yes         yes           -           yes          -          yes
    logger             no          no           no           yes         yes          -

So the client can never reach the logger (nor any back address) and the
logger never reaches the front segment; the server and the backup sit on both
segments (the backup takes over the server later). `topology.reachability()`
computes this matrix and the root tests check every cell.

Use:

    from ftcp.lab import up
    lab = up("10-10", "demo")             # or the `lab_factory` pytest fixture
    srv = lab.popen("server", ["iperf3", "-s", "-1"])
    lab.run("client", ["iperf3", "-c", lab.ip("server"), "-t", "3"])
    lab.down()

Topologies (rates count whole Ethernet frames; see `ftcp.lab.topology`):
`10-10`, `10-shared` (one userspace hub, one 10 Mbit/s budget for all),
`10-100`, `1g-10g`, `unshaped`.
"""

from ftcp.lab.net import Lab, down, labs, load, temporary_lab, up
from ftcp.lab.topology import (
    HOSTS,
    TOPOLOGIES,
    Hub,
    LabLayout,
    Segment,
    Topology,
    get_topology,
    reachability,
)

__all__ = [
    "HOSTS",
    "TOPOLOGIES",
    "Hub",
    "Lab",
    "LabLayout",
    "Segment",
    "Topology",
    "down",
    "get_topology",
    "labs",
    "load",
    "reachability",
    "temporary_lab",
    "up",
]
