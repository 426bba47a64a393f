"""Names users give things (VMs, pools, volumes, networks, snapshots): one rule for all."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
