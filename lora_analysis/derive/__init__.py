"""Derived tables: queries and statistics over an analysis, and the rank recommendation."""
