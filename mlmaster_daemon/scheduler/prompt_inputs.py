"""What one prompt is built from: the parents' code, output and error, the siblings' attempts,
the scoped memory section, the data preview and what is left of the budget."""

from __future__ import annotations

import asyncio
import zlib

from mlmaster_daemon.coders.protocol import CodeRequest
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.scheduler.search_state import SearchState
from mlmaster_daemon.search.policy import Pick


async def code_request(state: SearchState, node_id: int, pick: Pick) -> CodeRequest:
    task, store = state.task, state.parts.store
    parents = [await _parent_view(state, pid) for pid in pick.parent_ids]
    parent_code, parent_output, parent_error = parents[0] if parents else (None, None, None)
    other_code, other_output, _ = parents[1] if len(parents) > 1 else (None, None, None)
    # Nodes a daemon stop interrupted before they had code are not steps.
    used = await store.steps_used(task.id)
    # Read last, after every await, so attempts generated meanwhile are included.
    tree = state.policy.tree
    return CodeRequest(
        operator=pick.operator, task=task.spec, node_id=node_id, data_preview=state.preview,
        parent_code=parent_code, parent_output=parent_output, parent_error=parent_error,
        other_parent_code=other_code, other_parent_output=other_output,
        memory=state.memory.siblings(tree, pick.parent_id),
        memory_text=state.memory.context(pick.operator, pick.parent_ids, tree),
        steps_left=max(task.steps - used, 0),
        time_left_s=state.budget.left_s(state.now()),
        cv_folds=state.parts.settings.config.search.cv_folds,
        cv_seed=cv_seed(task.id),
        node_timeout_s=state.budget.node_timeout(state.now(), task.node_timeout_s),
    )


def cv_seed(task_id: str) -> int:
    """The seed of a task's validation folds: fixed by its id, so every node of the task, and
    the task after a restart, splits the rows the same way."""
    return zlib.crc32(f"mlmaster-folds:{task_id}".encode()) % 100_000


async def _parent_view(state: SearchState, node_id: int) -> tuple[str | None, str, str | None]:
    """(code, output tail, error) of a parent node."""
    parent = await state.parts.store.get_node(state.task.id, node_id)
    ws = Workspace(state.node_dir(node_id))
    output = await asyncio.to_thread(ws.output_tail,
                                     state.parts.settings.config.execution.output_tail_chars)
    return parent.code, output, parent.error
