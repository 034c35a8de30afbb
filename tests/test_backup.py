"""A corrupt database is refused at start with the way back; good ones are backed up."""

from __future__ import annotations

import pytest

from mlmaster_daemon.config import Config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import StoreError
from mlmaster_daemon.store.backup import latest_backup


async def test_each_start_keeps_a_backup_and_only_the_newest_three(config: Config) -> None:
    for _ in range(4):
        daemon = Daemon(config)
        await daemon.start()
        await daemon.stop()
    db = config.state_dir() / "mlmaster.db"
    backups = sorted((db.parent / "backups").glob("mlmaster-*.db"))
    assert len(backups) == 3
    assert latest_backup(db) == backups[-1]


async def test_a_corrupt_database_is_refused_naming_the_last_good_backup(
    config: Config,
) -> None:
    daemon = Daemon(config)
    await daemon.start()
    await daemon.stop()
    db = config.state_dir() / "mlmaster.db"
    data = bytearray(db.read_bytes())
    # Scribble over the schema page: quick_check (or opening) must notice.
    data[100:4000] = b"\xff" * 3900
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as err:
        await Daemon(config).start()
    message = err.value.message
    assert "is corrupt" in message
    assert str(latest_backup(db)) in message
    assert not config.socket_path().exists(), "a refused start does not listen"
