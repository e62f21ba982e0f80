"""``python -m tests.support.ray_loopback_start <ray start args>``: ``ray start`` kept on
127.0.0.1 for head AND worker nodes (tests/support/ray_nodes.py).

Ray 2.60 on Linux rewrites ``--node-ip-address 127.0.0.1`` (and a loopback ``--address``)
to the host's routable IP (``services.resolve_ip_for_localhost``); only
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps loopback, and with it ``ray start`` refuses
to start a non-head node ("Multi-node Ray clusters are not supported on Windows and OSX").
So the nodes' processes get that variable (they keep 127.0.0.1), and this CLI process
alone lifts the check and the rewrite before running Ray's own ``ray start``.
"""

from __future__ import annotations

import sys

from ray._private import ray_constants, services
from ray.scripts.scripts import main

if __name__ == "__main__":
    ray_constants.ENABLE_RAY_CLUSTER = True  # the multi-node check only
    services.resolve_ip_for_localhost = lambda host: host  # keep 127.0.0.1 as given
    sys.argv = ["ray", "start", *sys.argv[1:]]
    sys.exit(main())
