"""First-party BPTT trainer."""
