"""What a technician runs on the box's data: backup and restore, export, checks, retention, the box's own secrets."""
