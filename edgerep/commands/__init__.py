"""Commands: each composes library stages for one CLI command; nothing below imports this package."""
