"""Tasks: Examples with splits, templates and Verifiers; loaders and built-in suites."""
