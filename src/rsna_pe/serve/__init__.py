"""Serving predictions: one series' outputs, and the DICOM node that receives studies and sends results."""
