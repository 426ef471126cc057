"""Cryptography: the only package that imports ``cryptography``."""
