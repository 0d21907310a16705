"""The hardware prober: snapshots this machine and keeps the manager's copy current."""
