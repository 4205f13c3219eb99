"""Model zoo (see issue 5)."""
