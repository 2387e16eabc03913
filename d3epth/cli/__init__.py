"""The bodies of the command-line tools; ``tools/*.py`` are thin shims that call ``main(argv)`` here."""
