"""Answers on photos, videos and a webcam: face detectors, the scorer, the predict CLI and the web
demo."""
