"""Search benchmarks, printed as figures measured side by side in one run.

1. Pick latency: p50/p99 of one MCTS pick (select + add) while the tree grows through 1k,
   10k and 100k nodes. Statistics are kept incrementally, so a pick costs O(depth x branching),
   not O(tree); target p99 < 1 ms at 100k.
2. Policy quality on a seeded synthetic reward landscape: the best score reached by mcts
   (the default rule), mcts-v1 (`mcts_rule = "ml-master-v1"`), greedy and evolutionary after
   the same number of expansions, as a ratio to the landscape's optimum (1.0).

The landscape (seeded, documented): every node has a hidden quality q and a ceiling c; the
metric a node reports is q plus N(0, 0.01) noise (higher is better), and the optimum is 1.0.
- draft: its own ceiling c ~ U(0.4, 1.0) (some families simply go further than others) and
  q ~ U(0.2, 0.5) * c; buggy with probability 0.3.
- improve: inherits c; q' = q + (c - q) * N(0.2, 0.3), clipped to [0, c]; buggy with p 0.2.
- debug: inherits c and the buggy node's latent q; fixes the bug with probability 0.6.
- crossover: c = max of the parents' ceilings; q' = max(qa, qb) + (c - max) * N(0.2, 0.3),
  clipped to [0, c]; buggy with probability 0.2.
So a good score needs both exploration (find a high-ceiling draft) and exploitation (climb it).

Usage: .venv/bin/python benchmarks/bench_search.py [--sizes 1000 10000 100000] [--budget 200]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from mlmaster_daemon.config import SearchConfig
from mlmaster_daemon.models import Operator
from mlmaster_daemon.policy_config import make_policy
from mlmaster_daemon.search.policy import Pick, Policy


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pick_latency(sizes: list[int], window: int = 2000) -> None:
    rng = random.Random(1)
    policy = make_policy("mcts", SearchConfig(), lower_is_better=False, steps=max(sizes),
                         seed=0)
    node_id = 0
    samples: list[float] = []
    pending = list(sizes)
    while pending:
        started = time.perf_counter()
        pick = policy.select()
        if pick is None:
            raise SystemExit("the tree closed before reaching the size asked for")
        node_id += 1
        policy.add(node_id, pick)
        elapsed = time.perf_counter() - started
        metric = None if rng.random() < 0.25 else rng.random()
        policy.complete(node_id, pick, metric)
        if node_id > pending[0] - window:
            samples.append(elapsed * 1e6)
        if node_id == pending[0]:
            depth = max(_depth(policy, n) for n in range(max(1, node_id - 50), node_id + 1))
            print(f"pick latency at {node_id:>7} nodes: p50 {statistics.median(samples):7.1f} us"
                  f"  p99 {_percentile(samples, 0.99):7.1f} us  (recent depth ~{depth})")
            samples = []
            pending.pop(0)


def _depth(policy: Policy, node_id: int) -> int:
    return sum(1 for _ in policy.tree.ancestors(node_id)) - 1


class Landscape:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.latent: dict[int, tuple[float, float]] = {}

    def outcome(self, node_id: int, pick: Pick) -> float | None:
        rng = self.rng
        parents = [self.latent[p] for p in pick.parent_ids]
        if pick.operator is Operator.DRAFT:
            ceiling = rng.uniform(0.4, 1.0)
            q, p_bug = rng.uniform(0.2, 0.5) * ceiling, 0.3
        elif pick.operator is Operator.IMPROVE:
            q, ceiling = parents[0]
            q, p_bug = _clip(q + (ceiling - q) * rng.gauss(0.2, 0.3), ceiling), 0.2
        elif pick.operator is Operator.CROSSOVER:
            ceiling = max(c for _q, c in parents)
            top = max(q for q, _c in parents)
            q, p_bug = _clip(top + (ceiling - top) * rng.gauss(0.2, 0.3), ceiling), 0.2
        else:
            (q, ceiling), p_bug = parents[0], 0.4
        self.latent[node_id] = (q, ceiling)
        if rng.random() < p_bug:
            return None
        return q + rng.gauss(0, 0.01)


def _clip(q: float, ceiling: float) -> float:
    return min(ceiling, max(0.0, q))


def quality(budget: int, seeds: int, parallel: int) -> None:
    search = SearchConfig()
    print(f"best score / optimum after {budget} expansions, {parallel} in flight, mean of "
          f"{seeds} seeds:")
    contestants = [("mcts", "mcts", search),
                   ("mcts-v1", "mcts", search.model_copy(update={"mcts_rule": "ml-master-v1"})),
                   ("greedy", "greedy", search), ("evolutionary", "evolutionary", search)]
    for label, name, config in contestants:
        bests = []
        for seed in range(seeds):
            policy = make_policy(name, config, lower_is_better=False, steps=budget, seed=seed)
            landscape = Landscape(seed)
            inflight: list[tuple[int, Pick]] = []
            best = 0.0
            node_id = 0
            while node_id < budget or inflight:
                while len(inflight) < parallel and node_id < budget:
                    pick = policy.select()
                    if pick is None:
                        break
                    node_id += 1
                    policy.add(node_id, pick)
                    inflight.append((node_id, pick))
                if not inflight:
                    break
                done_id, done_pick = inflight.pop(0)
                metric = landscape.outcome(done_id, done_pick)
                policy.complete(done_id, done_pick, metric)
                if metric is not None:
                    best = max(best, landscape.latent[done_id][0])
            bests.append(best)
        print(f"  {label:<13} {statistics.mean(bests):.3f}  (min {min(bests):.3f}, "
              f"max {max(bests):.3f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=3)
    args = parser.parse_args()
    pick_latency(args.sizes)
    quality(args.budget, args.seeds, args.parallel)
