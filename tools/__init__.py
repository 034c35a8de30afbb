"""Developer harnesses that drive the daemon from outside; not part of the installed package."""
