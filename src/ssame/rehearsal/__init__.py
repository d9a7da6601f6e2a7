"""The rehearsal: a local stand-in for the hub (MMEB repositories and tiny models) for the paper code path."""
