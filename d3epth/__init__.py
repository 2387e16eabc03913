"""d3epth: distil diffusion depth models into fast monocular depth students (D3epth, ACML 2025)."""

__version__ = "0.1.0"
