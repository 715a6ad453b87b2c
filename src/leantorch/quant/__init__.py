"""Quantization simulation: encodings, quantizers, range estimators, configs, QuantSim, export."""
