"""The scheduler: the queue of tasks (`queue.py`), one task's search loop (`search_loop.py`),
one node's way through its states (`expansion.py`), budgets, prompt inputs, the task's memory,
resume and commit-then-publish. It works through seams only: `SearchParts` holds them."""

from mlmaster_daemon.scheduler.parts import SearchParts
from mlmaster_daemon.scheduler.queue import TaskQueue
from mlmaster_daemon.scheduler.search_loop import TaskSearch

__all__ = ["SearchParts", "TaskQueue", "TaskSearch"]
