"""``python -m tsmr``: the same command line as ``tsmr``."""

from .cli.main import main

if __name__ == "__main__":
    main()
