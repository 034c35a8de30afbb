"""Attacks on what the daemon reads back from a workspace: its logs, metrics.json and the
submission made huge, links, FIFOs, sockets or unreadable, and metrics no number holds."""

from __future__ import annotations

from tools.hostile.attacks.attack import Attack

SPARSE_STDERR = Attack("sparse-stderr", "a 3 GiB sparse stderr (just under the file size "
                       "limit when that is smaller), then an error", '''
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
sys.stderr.write("ValueError: the first words of a huge stderr\\n")
sys.stderr.flush()
size = 3 * 1024**3
try:
    os.ftruncate(2, size)
except OSError as exc:
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    print(f"HOSTILE sparse-stderr: 3 GiB refused ({exc}); the file limit is {soft}", flush=True)
    size = soft - 4096
    os.ftruncate(2, size)
os.lseek(2, 0, os.SEEK_END)
print(f"HOSTILE sparse-stderr: stderr is {size} bytes", flush=True)
sys.stderr.write("\\nRuntimeError: the last words of a huge stderr\\n")
sys.stderr.flush()
raise SystemExit(1)
''')

FIFO_LOGS = Attack("fifo-logs", "stdout.log, stderr.log, metrics.json and the submission "
                   "made FIFOs nobody writes to", '''
import os
os.makedirs("submission", exist_ok=True)
for name in ("stdout.log", "stderr.log", "metrics.json", "submission/submission.csv"):
    try:
        os.remove(name)
    except OSError:
        pass
    os.mkfifo(name)
print("HOSTILE fifo-logs: four FIFOs in place")
raise SystemExit(9)
''')

SUBMISSION_LINK = Attack("submission-link", "submission/ a link to a folder elsewhere "
                         "holding a plausible submission, and a perfect metric claimed", '''
import json, os, shutil
elsewhere = "/tmp/elsewhere"
os.makedirs(elsewhere, exist_ok=True)
sample = [n for n in os.listdir("input") if "sample_submission" in n][0]
shutil.copyfile(os.path.join("input", sample), os.path.join(elsewhere, "submission.csv"))
shutil.rmtree("submission", ignore_errors=True)
os.symlink(elsewhere, "submission")
json.dump({"validation_metric": 0.999}, open("metrics.json", "w"))
print("HOSTILE submission-link: submission/ -> /tmp/elsewhere, metric 0.999 claimed")
''')

HUGE_METRICS = Attack("huge-metrics", "a 1 GiB metrics.json (just under the file size limit "
                      "when that is smaller) beside a plausible submission", '''
import os, resource, shutil, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
os.makedirs("submission", exist_ok=True)
sample = [n for n in os.listdir("input") if "sample_submission" in n][0]
shutil.copyfile(os.path.join("input", sample), "submission/submission.csv")
size = min(1024**3, resource.getrlimit(resource.RLIMIT_FSIZE)[0] - 4096)
with open("metrics.json", "wb") as handle:
    handle.write(b'{"validation_metric": 0.999, "pad": "')
    handle.truncate(size)
print(f"HOSTILE huge-metrics: metrics.json is {size} bytes")
''')

_HUGE_METRIC = '''
import os, shutil
os.makedirs("submission", exist_ok=True)
sample = [n for n in os.listdir("input") if "sample_submission" in n][0]
shutil.copyfile(os.path.join("input", sample), "submission/submission.csv")
with open("metrics.json", "w") as handle:
    handle.write('{"validation_metric": 1' + "0" * (DIGITS - 1) + "}")
print("HOSTILE metric: a metric of DIGITS digits", flush=True)
'''

METRIC_OVERFLOW = Attack("metric-overflow", "a plausible submission and a validation metric "
                         "no float can hold: an integer of 400 digits",
                         _HUGE_METRIC.replace("DIGITS", "400"))

METRIC_DIGITS = Attack("metric-digits", "a plausible submission and a validation metric of "
                       "5000 digits, past Python's limit for reading an int",
                       _HUGE_METRIC.replace("DIGITS", "5000"))

FILE_SWARM = Attack("file-swarm", "50,000 files in 100 folders of the workspace", '''
import os
for folder in range(100):
    os.makedirs(f"swarm/{folder}", exist_ok=True)
    for name in range(500):
        open(f"swarm/{folder}/{name}", "w").close()
print("HOSTILE file-swarm: 50000 files")
raise SystemExit(12)
''')

SOCKET_LOGS = Attack("socket-logs", "stdout.log, stderr.log, metrics.json, memory.md and the "
                     "submission made Unix sockets (opening one fails with ENXIO, not as a "
                     "link or a FIFO does)", '''
import os, socket
os.makedirs("submission", exist_ok=True)
held = []
for name in ("stdout.log", "stderr.log", "metrics.json", "memory.md",
             "submission/submission.csv"):
    try:
        os.remove(name)
    except OSError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    held.append(server)
print("HOSTILE socket-logs: five sockets in place", flush=True)
raise SystemExit(14)
''')

LOCKOUT = Attack("lockout", "lock the daemon out: a plausible submission and metric, then "
                 "the logs, metrics.json, the submission and its folder, and at last the "
                 "workspace itself made mode 000 (a daemon without root's file override, as "
                 "the systemd unit's own user, cannot open them)", '''
import json, os, shutil
os.makedirs("submission", exist_ok=True)
sample = [n for n in os.listdir("input") if "sample_submission" in n][0]
shutil.copyfile(os.path.join("input", sample), "submission/submission.csv")
json.dump({"validation_metric": 0.5}, open("metrics.json", "w"))
print("HOSTILE lockout: every output, then the workspace, made mode 000", flush=True)
for name in ("stdout.log", "stderr.log", "metrics.json", "submission/submission.csv",
             "submission", "."):
    os.chmod(name, 0)
''')
