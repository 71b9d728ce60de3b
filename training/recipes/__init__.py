"""Recipes: complete, reproducible training runs that produce weights the project ships."""
