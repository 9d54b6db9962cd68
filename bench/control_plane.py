"""Local control plane figures: binary cache hit, start-up time, memory with many simulated nodes.

    python bench/control_plane.py [--nodes 100]

The cold build (``go build`` of kube-apiserver, controller-manager, scheduler, kubectl, etcd,
kwok, helm) is measured by ``python -m kvscale.testing.binaries`` on an empty cache and printed
there; this script reports the cached path and the running cluster.
"""

from __future__ import annotations

import argparse
import time

from kvscale.testing.binaries import ensure_binaries
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.fleet import DEFAULT_FLEET, NodePool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    args = ap.parse_args()

    t0 = time.perf_counter()
    ensure_binaries()
    cache_hit = time.perf_counter() - t0

    cluster = LocalCluster()
    cluster.start()
    try:
        base = cluster.component_rss_bytes()
        extra = max(0, args.nodes - sum(p.nodes for p in DEFAULT_FLEET))
        t1 = time.perf_counter()
        cluster.add_nodes((NodePool(gpu="L4", nodes=extra, gpus_per_node=1),)) if extra else None
        add_s = time.perf_counter() - t1
        time.sleep(10)  # let heartbeats and informers settle
        loaded = cluster.component_rss_bytes()
    finally:
        cluster.stop()

    mib = 1 << 20
    print(f"binary cache hit:          {cache_hit * 1000:.0f} ms")
    print(f"control plane start-up:    {cluster.started_s:.1f} s (8 GPU nodes Ready)")
    print(f"adding {extra} nodes until Ready: {add_s:.1f} s")
    print(f"{'component':26s} {'RSS 8 nodes MiB':>16s} {f'RSS {args.nodes} nodes MiB':>18s}")
    for name in loaded:
        print(f"{name:26s} {base.get(name, 0) / mib:16.0f} {loaded[name] / mib:18.0f}")
    print(f"{'total':26s} {sum(base.values()) / mib:16.0f} {sum(loaded.values()) / mib:18.0f}")


if __name__ == "__main__":
    main()
