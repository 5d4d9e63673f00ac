"""Matching tasks to worker slots: partition trees, the in-memory matcher, the task reader.

Kept free of imports so that importing the compiled core never drags in I/O modules.
"""
