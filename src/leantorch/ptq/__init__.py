"""Post-training quantization techniques (BN folding; more to come: CLE, bias correction, AdaRound)."""
