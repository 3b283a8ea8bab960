"""First-party reach tasks (delayed reach, target switch, target relocation)."""
