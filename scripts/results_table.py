#!/usr/bin/env python3
"""Prints the markdown table of docs/results.md from `llm2comp eval --json`
files: one row per NAME=FILE argument, one column per task's main score,
and their mean.

usage: results_table.py "raw model, mean pooling=runs/eval-base.json" ...
"""
import json
import sys

TASKS = ["stsb", "sickr", "banking77", "banking77-clustering"]


def main() -> None:
    rows = [a.split("=", 1) for a in sys.argv[1:]]
    print("| model | " + " | ".join(TASKS) + " | mean |")
    print("|---|" + "---:|" * (len(TASKS) + 1))
    for name, path in rows:
        doc = json.load(open(path))
        scores = [doc["tasks"].get(t, {}).get("main_score") for t in TASKS]
        have = [s for s in scores if s is not None]
        cells = [f"{s:.2f}" if s is not None else "-" for s in scores]
        mean = f"{sum(have) / len(have):.2f}" if len(have) == len(TASKS) else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {mean} |")


if __name__ == "__main__":
    main()
