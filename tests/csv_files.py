"""Shared by the data tests: write a small CSV file with the csv module."""
import csv


def write_csv(path, header, rows):
    """Writes ``header`` and ``rows`` to ``path`` as CSV; returns the path as a string."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)
