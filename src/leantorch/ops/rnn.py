"""rnn ops (work in progress)."""
