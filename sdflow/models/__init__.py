"""Model families that ship with sdflow or are built for tests, and the files they need."""
