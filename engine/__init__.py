"""Tariff engine."""
