"""List -> decode pool -> writer, resumable and atomic; and merging converted parts."""

from mtldata.convert.pipeline import ConvertResult, ConvertSpec, convert

__all__ = ["ConvertResult", "ConvertSpec", "convert"]
