"""The papers' reference tables (Bai et al. 2020; Fort et al. 2020), settings.csv (which bundled
recipe reproduces which of the paper's settings), and the `taylorcli paper` manifests
(NAME.yaml), shipped as package data."""
