"""Leaf helpers every layer may use (spaces, methods, benchmarks, harness): no project imports."""
