"""Attacks on the machine and the daemon's processes: forks, memory, the disk, killing the
daemon, and processes that outlive or ignore their node.

None may hurt the machine when a defence fails: the fork bomb is flat and stops at 4000
children, the memory hog stops itself while the machine still has 2 GiB available, and the
disk filler never writes more than `Targets.fill_cap_bytes`."""

from __future__ import annotations

from tools.hostile.attacks.attack import Attack

FORK_BOMB = Attack("fork-bomb", "fork (flat, up to 4000 children that sleep) until refused",
                   '''
import os, time
children = 0
try:
    for _ in range(4000):
        pid = os.fork()
        if pid == 0:
            time.sleep(8)
            os._exit(0)
        children += 1
except OSError as exc:
    print(f"HOSTILE fork-bomb: fork refused after {children} children: {exc}", flush=True)
else:
    print(f"HOSTILE fork-bomb: {children} children, never refused", flush=True)
raise SystemExit(6)
''')

MEMORY_HOG = Attack("memory-hog", "allocate and touch 30 GB, 256 MiB at a time", '''
import time
held, chunk = [], 256 * 1024 * 1024

def available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0

while len(held) * chunk < 30 * 1024**3:
    if available() < 2 * 1024**3:
        # Only when nothing stopped it: a hostile run must not take the machine down.
        print(f"HOSTILE memory-hog: stopped myself at {len(held) * chunk >> 20} MiB: no limit "
              "was hit and the machine is nearly out of memory", flush=True)
        break
    held.append(b"\\1" * chunk)
    if len(held) % 4 == 0:
        print(f"HOSTILE memory-hog: holding {len(held) * chunk >> 20} MiB", flush=True)
else:
    print("HOSTILE memory-hog: holding 30 GB, never refused", flush=True)
raise SystemExit(7)
''', heavy=True, may_time_out=True)

DISK_FILLER = Attack("disk-filler", "write files until the disk refuses (a new file each "
                     "time the file size limit refuses one)", '''
import errno, os, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
chunk, written, files, why = b"\\1" * (8 << 20), 0, 0, "the cap"
while written < T["fill_cap_bytes"]:
    files += 1
    try:
        with open(f"fill-{files}.bin", "wb") as handle:
            while written < T["fill_cap_bytes"]:
                handle.write(chunk)
                handle.flush()
                written += len(chunk)
    except OSError as exc:
        why = exc.strerror
        if exc.errno != errno.EFBIG:
            break
print(f"HOSTILE disk-filler: wrote {written >> 20} MiB in {files} files; stopped by {why}")
raise SystemExit(8)
''', heavy=True, needs_small_disk=True)

KILL_PARENT = Attack("kill-parent", "SIGKILL what started it, and every process whose "
                     "command line names the daemon's socket", '''
import os, signal
targets = {os.getppid()}
for pid in (p for p in os.listdir("/proc") if p.isdigit()):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if T["socket"].encode() in handle.read():
                targets.add(int(pid))
    except OSError:
        pass
for pid in sorted(targets):
    try:
        os.kill(pid, signal.SIGKILL)
        print(f"HOSTILE kill-parent: sent SIGKILL to {pid}", flush=True)
    except OSError as exc:
        print(f"HOSTILE kill-parent: {pid}: {exc.strerror}", flush=True)
raise SystemExit(10)
''')

ESCAPEE = Attack("escapee", "leave a process behind: double fork and setsid, then write to "
                 "the workspace for a minute after the script has exited", '''
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for _ in range(120):
            with open("escapee.log", "a") as handle:
                handle.write(f"{time.time()}\\n")
            time.sleep(0.5)
        os._exit(0)
    os._exit(0)
time.sleep(0.2)
print("HOSTILE escapee: a grandchild in a session of its own is left writing escapee.log")
raise SystemExit(11)
''')

IMMORTAL = Attack("immortal", "ignore SIGTERM in the script and in children that leave its "
                  "session, and never end: only the time limit's SIGKILL of the whole cgroup "
                  "stops it", '''
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(3):
    if os.fork() == 0:
        os.setsid()
        while True:
            time.sleep(1)
print("HOSTILE immortal: three children in sessions of their own, all deaf to SIGTERM",
      flush=True)
while True:
    time.sleep(1)
''', heavy=True, may_time_out=True)
