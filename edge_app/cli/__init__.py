"""The `edge-app` command."""
