"""Preference data: reading and formats, tokenisation, collation."""

from rewardkit.data.formats import Columns, DataError, PreferenceExample, load_preferences

__all__ = ["Columns", "DataError", "PreferenceExample", "load_preferences"]
