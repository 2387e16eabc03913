"""Small helpers: colour maps and image panels, contact sheets."""
