"""Generated from proto/tariff/v1 by `make proto`: never edit by hand."""
