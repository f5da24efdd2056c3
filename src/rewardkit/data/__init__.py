"""Data: rows (readers) -> typed examples (pairs, rankings, targets) -> tokens (tokenize) -> batches
(collators, packing) in the order `batching` draws them."""

from rewardkit.config import Columns
from rewardkit.data.pairs import PreferenceExample, load_preferences
from rewardkit.data.readers import DataError, LoadReport, load_examples, read_rows

__all__ = ["Columns", "DataError", "LoadReport", "PreferenceExample", "load_examples", "load_preferences", "read_rows"]
