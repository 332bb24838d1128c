"""Core data types, errors, registry and settings. Imports nothing heavy."""
