"""Tariff Python client."""
