"""Tables and figures from sweep results (ablation tables, reliability diagrams, singular-value evidence).

Reads only ``results.jsonl`` files and ``record.json`` records; see DESIGN.md. Built in a later issue.
"""
