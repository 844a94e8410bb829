"""Composition root: settings, the CLI, serve wiring and the web app assembly."""
