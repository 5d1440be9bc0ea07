"""Tariff server."""
