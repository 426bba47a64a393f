"""The REST API (FastAPI): the one door for the CLI, the web UI and scripts."""
