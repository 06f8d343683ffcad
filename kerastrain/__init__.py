"""kerastrain."""
