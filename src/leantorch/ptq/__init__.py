"""Post-training techniques: BN folding, CLE, bias correction, AdaRound, GPTQ, SeqMSE and AutoQuant."""
