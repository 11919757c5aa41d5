"""The thin command-line layer: parses flags, calls library functions, reports. Only this package imports Typer."""
