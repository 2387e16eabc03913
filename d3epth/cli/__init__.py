"""The bodies of the command-line tools; ``tools/*.py`` are thin shims that call ``main(argv)`` here.

A tool imports torch, Lightning and diffusers (through :mod:`d3epth.inference`, :mod:`d3epth.models`,
:mod:`d3epth.cli.trainer`) inside ``main`` after parsing its arguments, so that ``--help`` and a wrong argument answer
at once instead of after seconds of imports; what they share is in :mod:`d3epth.cli.common`.
"""
