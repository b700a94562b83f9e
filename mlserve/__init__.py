"""mlserve: one process that serves many versioned ML models over HTTP."""

__version__ = "0.1.0"
