"""inforge-action: ship services to plain Linux VMs."""

__version__ = "1.0.0"
