"""A process that takes a lease, keeps its heartbeat going and waits to be killed:
`python -m tests.memory._lease_worker URL NAME TTL READY_FILE`.

A separate process, because the point is what a SIGKILL does to a lease (no release, no last heartbeat),
which a thread in the test process cannot show.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from strop.memory import Store
from strop.memory.leases import LeaseKeeper

if __name__ == "__main__":
    url, name, ttl, ready = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    store = Store(url)
    holder = f"worker:{os.getpid()}"
    keeper = LeaseKeeper(store, store.acquire_lease(name, holder, ttl), ttl)
    Path(ready).write_text(holder)
    time.sleep(300)
    raise SystemExit("never killed")
