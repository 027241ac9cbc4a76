"""``python -m hs100local`` runs the command-line interface."""

from hs100local.cli import main

if __name__ == "__main__":
    main()
