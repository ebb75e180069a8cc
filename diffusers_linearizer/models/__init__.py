"""Linearizer models: invertible networks, linear cores and `LinearizerModel`."""
