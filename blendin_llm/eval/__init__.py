"""Evaluation: how well a pair answers and how well its reliability score ranks its answers.

Behind the ``[eval]`` extra (matplotlib for the report's charts, scikit-learn for fitting score
models); the core (``blendin_llm``) never imports this package.

- ``datasets``: evaluation items from JSONL/CSV files (GSM8K, XSTest, your own).
- ``scoring``: rule-based answer checks (last number, refusal).
- ``metrics``: AUROC, PRR, ECE, Brier, risk-coverage.
- ``runner``: the resumable evaluation run (``blendin eval``) and its summaries.
- ``report``: the HTML report with its charts.
- ``calibration``: ``blendin calibrate`` (gamma, alpha, verdict) and fitting score models.
"""
