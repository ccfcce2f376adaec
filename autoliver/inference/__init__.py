"""Prediction: sliding window, fold and configuration ensembling, cascade, export, model choice."""
