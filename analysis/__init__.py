"""Tables and figures from sweep results: ablation tables with intervals, paired differences, reliability
diagrams, singular-value evidence, sensitivity figures, and ``analysis.select`` (choose on ID validation).

Reads only ``results.jsonl`` files and ``record.json`` records (docs/record.md), Optuna storages or W&B runs.
"""
