"""What reads finished runs: tables, model cards, figures, exports and the paper's table plans."""
