"""Analysis: adapters and base weights in, exact subspace maths, tidy tables out."""
