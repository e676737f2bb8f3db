"""One module per command: each composes library stages; nothing below imports this package."""
