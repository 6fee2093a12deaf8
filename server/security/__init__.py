"""Credentials of a secure federation: the TLS certificates of the SuperLink and the
SuperNodes' authentication keys (the `cryptography` package; Flower's formats)."""
