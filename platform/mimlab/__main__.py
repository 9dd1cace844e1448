"""``python -m mimlab`` — same as the ``platform`` console script."""

from mimlab.cli import main

if __name__ == "__main__":
    main()
