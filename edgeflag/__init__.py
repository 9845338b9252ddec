"""The `edgeflag` command: one thin module per command group (edgeflag.cli).

Nothing in the product packages imports this package.
"""

__version__ = "0.1.0"
