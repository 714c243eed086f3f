"""Causal localisation of what question-translation alignment changes (`alignlens localize`, issue 22)."""
