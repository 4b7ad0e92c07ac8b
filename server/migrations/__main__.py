"""``python -m server.migrations revision -m MESSAGE``."""

from server.migrations import main

main()
