"""The operating system's side: background loops, systemd notification, wake-ups between processes, durable file
writes."""
