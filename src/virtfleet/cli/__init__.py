"""The `virtfleet` command line: Typer commands over the REST API client."""
