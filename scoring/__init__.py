"""Customer scoring, pure: CLV model inputs, BG/NBD + Gamma-Gamma fits and predictions, RFM scores and segments.

No AWS here (the I/O lives in clickstream/score.py): functions take and return Arrow tables, NumPy arrays and plain
records, so they are tested on hand-made customers. The model library (pymc-marketing) is an optional extra and is
imported only by ``scoring.clv`` when a model is fitted.
"""
