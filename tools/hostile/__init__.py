"""Hostile run: a prompt-injected model hands the daemon attacks to run while the machine
fails under it, and the run checks that the daemon survived, leaked nothing and lost nothing.

`python -m tools.hostile` (or `scripts/hostile`) builds two example competitions
with a unique marker in their hidden answers (`prepared/private/test.csv`), writes an API key
(another unique marker) to a key file, mounts a small tmpfs for the daemon's state dir where
it can, starts `model.InjectedModel` (an OpenAI-compatible server on 127.0.0.1) and runs
`mlmaster daemon` as a subprocess on it. It submits a victim task, whose model writes a working
script each time, then an attacker task, whose model answers each code request with the next
script of `attacks.ATTACKS`, cycled, a working script after each attack so the task can find
a best submission. While they run, the machine fails (each fault optional; see `faults`):
the daemon SIGSTOPped past the node time limit, the state dir's disk full, its WAL lost, and a
crash while the trap attack has its links planted. At the end the daemon stops with SIGTERM
and the run prints, and checks, `report.HostileReport`.

The modules: `settings` (what a run is asked to do), `attacks` (the scripts and their
catalogue), `model` (the injected model's server), `watched` (the daemon as the run watches
it), `faults`, `leaks` (the planted secrets and the scan), `checks` (the other checks),
`report` (the figures and the verdict), `run` (one run, tying them together) and `cli`.
"""
