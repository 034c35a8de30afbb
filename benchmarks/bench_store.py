"""Node-transition commit rate of the store: synchronous=FULL (what the daemon uses) against
synchronous=NORMAL, measured side by side in one run, printed as a ratio.

Usage: .venv/bin/python benchmarks/bench_store.py [--nodes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from mlmaster_daemon.models import NodeState, Operator, TaskState
from mlmaster_daemon.store import NodeRecord, Store, TaskRecord
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

TRANSITIONS = (NodeState.GENERATING, NodeState.READY, NodeState.RUNNING, NodeState.EVALUATING)


async def _run(path: Path, nodes: int, synchronous: str) -> float:
    store = await Store.open(path)
    # The daemon's setting is FULL; this benchmark swaps it on both connections for the baseline.
    for conn in (store._writer, store._reader):
        await conn.execute(f"PRAGMA synchronous = {synchronous}")
    spec = TaskSpec(name="bench", root=path.parent, public_dir=path.parent, private_dir=None,
                    description="", metric=Metric.RMSE, lower_is_better=True, target="y",
                    id_column="id")
    await store.insert_task(TaskRecord(id="t", name="bench", task_dir=str(path.parent),
                                       spec=spec, policy="mcts", steps=nodes, time_limit_s=1,
                                       node_timeout_s=1, state=TaskState.RUNNING,
                                       created_at=time.time()))
    started = time.perf_counter()
    for node_id in range(1, nodes + 1):
        await store.insert_node(NodeRecord(task_id="t", id=node_id, parent_id=None,
                                           operator=Operator.DRAFT, state=NodeState.PENDING,
                                           created_at=time.time()))
        for state in TRANSITIONS:
            await store.update_node("t", node_id, state=state)
        await store.finish_node("t", node_id, {"state": NodeState.DONE, "metric": 1.0},
                                [(node_id, 1, 1.0, None)])
    elapsed = time.perf_counter() - started
    await store.close()
    return nodes * (len(TRANSITIONS) + 2) / elapsed


async def main(nodes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # Interleave the two settings so machine noise hits both alike.
        full, normal = [], []
        for round_ in range(3):
            full.append(await _run(Path(tmp) / f"full{round_}.db", nodes, "FULL"))
            normal.append(await _run(Path(tmp) / f"normal{round_}.db", nodes, "NORMAL"))
    best_full, best_normal = max(full), max(normal)
    print(f"commits/s  synchronous=FULL:   {best_full:8.0f}")
    print(f"commits/s  synchronous=NORMAL: {best_normal:8.0f}")
    print(f"ratio FULL/NORMAL: {best_full / best_normal:.2f}")
    # A node makes six commits; even a slow disk's rate dwarfs a node's seconds of runtime.
    print(f"node transitions per second the store sustains (FULL): {best_full / 6:.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=300)
    asyncio.run(main(parser.parse_args().nodes))
