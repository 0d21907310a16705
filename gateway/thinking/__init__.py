"""Reasoning models: one thinking-budget contract over every dialect (intent.py), inline thoughts split out
(tags.py), and the two engine calls that keep thinking within its budget (workflow.py)."""
