"""Jobs: every state change is persisted before it acts, runs with progress, one at a time per target."""
