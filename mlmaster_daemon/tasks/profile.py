"""What the search learns about a task's data before it starts: the preview shown in prompts and
the profile that L3 lessons are matched by. Blocking (pandas, file reads): run in a thread."""

from __future__ import annotations

from mlmaster_daemon.errors import InvalidTaskDir
from mlmaster_daemon.search.hcc import TaskProfile
from mlmaster_daemon.tasks import archives, registry
from mlmaster_daemon.tasks.competition import table_header
from mlmaster_daemon.tasks.spec import TaskSpec


def data_preview(spec: TaskSpec) -> str:
    # pandas loads here, in a worker thread, not at daemon start.
    from mlmaster_daemon.tasks.preview import data_preview as preview

    return preview(spec)


def task_profile(spec: TaskSpec) -> TaskProfile:
    """What L3 compares tasks by: modality, metric, task type and size."""
    known = registry.lookup(spec.competition_id or "")
    modality = known.modality if known is not None else "tabular"
    rows = features = 0
    if archives.is_table(spec.train_file):
        try:
            columns = table_header(spec.public_dir, spec.train_file)
            rows = archives.count_rows(spec.public_dir, spec.train_file)
        except (OSError, InvalidTaskDir):
            # A profile only ranks lessons: a table that cannot be read counts as empty.
            columns, rows = [], 0
        features = len([c for c in columns if c not in (spec.target, spec.id_column)])
    return TaskProfile.build(modality, spec.metric.value, not spec.metric.is_regression,
                             rows, features)
