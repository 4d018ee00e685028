"""Showing: the paper's numbers, findings in words, figures and the report document."""
