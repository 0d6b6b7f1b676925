"""Exact operator fusions: one small module per theme, each a list of Rules (see rules.py).

Every theme registers its own pass (e.g. `fold-batchnorm`), and `fusion` runs all of them to a
joint fixed point with common-subexpression elimination in between; recipes normally use that.
"""
