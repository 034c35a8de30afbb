"""The built-in AutoML coder: real scikit-learn/LightGBM scripts, no model needed."""
