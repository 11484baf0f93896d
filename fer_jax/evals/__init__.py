"""Evaluation of a trained state: metrics and calibration."""
