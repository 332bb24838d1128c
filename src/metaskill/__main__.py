"""``python -m metaskill`` runs the command line (same as the ``metaskill`` command)."""

from metaskill.cli import main

if __name__ == "__main__":
    main()
