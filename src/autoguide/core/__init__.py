"""Foundations every floor shares: units of training time, typed-settings checks, lazy exports."""
