"""The papers' reference tables (Bai et al. 2020; Fort et al. 2020), shipped as package data,
and settings.csv: which bundled recipe reproduces which of the paper's settings."""
