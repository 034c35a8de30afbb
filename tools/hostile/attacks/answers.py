"""Attacks that are the model's answer itself: one too long to hold, one no UTF-8 can hold,
and one that repeats the API key the model's server was sent."""

from __future__ import annotations

from tools.hostile.attacks.attack import ECHOED_KEY, Attack

HUGE_ANSWER = Attack("huge-answer", "the model's answer: 64 MiB of plan streamed before a "
                     "small script, whatever max_tokens asked for", '''
print("HOSTILE huge-answer: the daemon took a 64 MiB answer and ran its code", flush=True)
raise SystemExit(15)
''', answer_mb=64)

SURROGATE = Attack("surrogate", "the model's answer: a script holding a lone UTF-16 surrogate "
                   "(valid JSON, \\ud800, but no valid UTF-8) and a NUL byte", '''
# a lone surrogate: \ud800, and a NUL: \0
print("HOSTILE surrogate: the daemon stored and ran a script no UTF-8 can hold", flush=True)
raise SystemExit(16)
''')

ECHO_KEY = Attack("echo-key", "the model's answer echoes the API key it was sent, in its plan "
                  "and in the script, which prints it and writes it to memory.md, metrics.json "
                  "and stderr (as a model that repeats its context might)", f'''
import json, sys
# The model saw this in its request: {ECHOED_KEY}
key = "{ECHOED_KEY}"
print(f"HOSTILE echo-key: the key is {{key}}", flush=True)
open("memory.md", "w").write(key)
json.dump({{"validation_metric": key}}, open("metrics.json", "w"))
sys.exit(f"failing with the key {{key}}")
''', echo_key=True)
