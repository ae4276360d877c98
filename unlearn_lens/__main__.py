"""``python -m unlearn_lens`` runs the command line."""

from unlearn_lens.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
