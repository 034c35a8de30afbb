"""What writes code for the search: the `Coder` / `Reviewer` seams (`protocol.py`), the built-in
offline coder (`offline/`) and the model-backed one (`llm/`)."""
