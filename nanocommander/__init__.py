"""NanoCommander: proxy-tuned composite models (large + alpha * (tuned - base)) served locally."""
