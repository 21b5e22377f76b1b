"""The version of tsmr (also ``tsmr.__version__``), in a module of its own so that any part can name it."""

__version__ = "0.1.0"
