"""Developer tools (stub generation); not used by the server at run time."""
