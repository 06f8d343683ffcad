"""Recipe scripts: absl-flag programs that wire kerastrain together (python -m recipes.NAME)."""
