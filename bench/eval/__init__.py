"""berth's evaluation (issue 8): python -m bench.eval."""
