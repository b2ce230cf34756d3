"""The library under the entry scripts: settings, model, weights, training loop, evaluation."""
