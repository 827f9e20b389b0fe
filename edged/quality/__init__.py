"""Quality measured on the device: output confidence, difficulty strata, delayed labels and
their accuracy and calibration, confidence cascades (docs/quality.md)."""
